#!/usr/bin/env node
// ============================================================================================
//  EMULATED CHAIN — DEVELOPMENT AND TESTS ONLY. NOT TON. NO REAL FUNDS. NO CONSENSUS.
// ============================================================================================
// A long-running process that holds one @ton/sandbox Blockchain (the real TVM emulator running
// the committed contracts/build/*.boc) and answers JSON-lines requests on stdin/stdout:
//
//   request:  {"id": 1, "method": "get_balance", "params": {"address": "EQ..."}}
//   response: {"id": 1, "result": {...}}   or   {"id": 1, "error": {"code": -32000, "message": "..."}}
//
// Requests are handled strictly one at a time, in arrival order. Amounts and 256-bit integers
// travel as decimal strings; cells as base64 BoC. Only JSON goes to stdout; logs go to stderr.
// The clock does not run by itself: it starts at the wall clock (or --now) and moves only with
// set_now / advance_time, so tests decide when challenge periods end.
//
//   node localchain.mjs [--now UNIXTIME] [--state FILE] [--listen HOST:PORT]
//     --state FILE        load the chain from FILE if it exists; save to it on save_state and on exit
//     --listen HOST:PORT  also serve the same JSON lines over TCP (one shared chain for a local cluster);
//                         the ready line on stdout then carries the bound "listen" address. Bind 127.0.0.1.
//
// Methods: see METHODS below and contracts/README.md.
import { createInterface } from 'node:readline';
import { createServer } from 'node:net';
import { existsSync, readFileSync, writeFileSync, renameSync } from 'node:fs';
import { Blockchain, internal, snapshotToSerializable, snapshotFromSerializable } from '@ton/sandbox';
import { Address, Cell, beginCell, contractAddress, toNano } from '@ton/core';
import {
  channelStateInit, registryStateInit, registryBody, registryDictKeys, registryModels, registryMrtds, TCB_STATUSES,
  topUpBody, summarizeTx, burned,
  loadCode, loadMeta,
} from '../lib/cocoon.mjs';

const LABEL = 'EMULATED (@ton/sandbox, dev-only; not a real TON network)';

function argValue(name) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

class RpcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}
const invalid = (msg) => new RpcError(-32602, msg);

const CODE = { payment_channel: loadCode('payment_channel'), registry: loadCode('registry') };
const META = { payment_channel: loadMeta('payment_channel'), registry: loadMeta('registry') };

let chain;
const wallets = new Map(); // name -> SandboxContract<TreasuryContract>
const known = new Map(); // address string -> kind ('wallet:<name>' | 'payment_channel' | 'registry' | 'account')
let minted = 0n; // coins created out of thin air (new wallets, airdrops)
let burnedTotal = 0n; // fees and forward fees taken out by transactions
const recent = []; // summaries of recent transactions, newest last
const RECENT_MAX = 2000;
const statePath = argValue('--state');

async function init() {
  chain = await Blockchain.create();
  chain.verbosity = { print: false, blockchainLogs: false, vmLogs: 'none', debugLogs: false };
  if (statePath && existsSync(statePath)) {
    const saved = JSON.parse(readFileSync(statePath, 'utf-8'));
    await chain.loadFrom(snapshotFromSerializable(saved.snapshot));
    minted = BigInt(saved.minted);
    burnedTotal = BigInt(saved.burned);
    for (const [a, k] of saved.known) known.set(a, k);
    for (const name of saved.wallets) {
      wallets.set(name, await chain.treasury(name, { resetBalanceIfZero: false }));
    }
  } else {
    chain.now = Number(argValue('--now') ?? Math.floor(Date.now() / 1000));
  }
}

function saveState(path = statePath) {
  if (!path) throw invalid('no state path: pass --state FILE or params.path');
  const data = {
    label: LABEL,
    snapshot: snapshotToSerializable(chain.snapshot()),
    minted: minted.toString(),
    burned: burnedTotal.toString(),
    known: [...known.entries()],
    wallets: [...wallets.keys()],
  };
  writeFileSync(path + '.tmp', JSON.stringify(data));
  renameSync(path + '.tmp', path);
  return { path };
}

// ---- parameter helpers ---------------------------------------------------------------------
function need(p, key) {
  if (p[key] === undefined || p[key] === null) throw invalid(`missing param ${key}`);
  return p[key];
}
function parseAddr(s, key = 'address') {
  try {
    return Address.parse(String(s));
  } catch {
    throw invalid(`bad ${key}: ${s}`);
  }
}
function parseBig(s, key) {
  try {
    return BigInt(s);
  } catch {
    throw invalid(`bad integer ${key}: ${s}`);
  }
}
function parseCell(b64, key) {
  try {
    return Cell.fromBase64(String(b64));
  } catch {
    throw invalid(`bad BoC ${key}`);
  }
}
function parseKey(hex, key) {
  const h = String(hex).replace(/^0x/, '');
  if (!/^[0-9a-fA-F]{64}$/.test(h)) throw invalid(`${key} must be 32 bytes hex`);
  return h.toLowerCase();
}
function wallet(name) {
  const w = wallets.get(String(name));
  if (!w) throw invalid(`unknown wallet ${name}: create_wallet first`);
  return w;
}
function fmtAddr(a) {
  return a.toString({ bounceable: true, urlSafe: true });
}

// ---- chain helpers ---------------------------------------------------------------------------
async function balanceOf(a) {
  return (await chain.getContract(a)).balance;
}

async function accountStatus(a) {
  const c = await chain.getContract(a);
  return c.accountState?.type ?? 'nonexist';
}

function record(result) {
  const sums = result.transactions.map(summarizeTx);
  burnedTotal += burned(result.transactions);
  for (const s of sums) {
    if (!known.has(s.account)) known.set(s.account, 'account');
    for (const m of s.outMessages) if (!known.has(m.to)) known.set(m.to, 'account');
    recent.push(s);
  }
  while (recent.length > RECENT_MAX) recent.shift();
  return sums;
}

/** Sends from a wallet; reports all transactions and the destination's first one. */
async function sendFrom(w, to, value, body, bounce, init) {
  const r = await w.send({ to, value, body, bounce, init });
  const sums = record(r);
  const target = sums.find((s) => s.account === fmtAddr(to) && s.inType === 'internal');
  return {
    success: target ? target.success : false,
    exit_code: target ? target.exitCode : null,
    destination: target ?? null,
    transactions: sums,
  };
}

function stackToJson(items) {
  return items.map((it) => {
    switch (it.type) {
      case 'int':
        return { type: 'int', value: it.value.toString() };
      case 'null':
        return { type: 'null' };
      case 'nan':
        return { type: 'nan' };
      case 'cell':
      case 'slice':
      case 'builder': {
        const out = { type: it.type, boc: it.cell.toBoc().toString('base64') };
        try {
          const s = it.cell.beginParse();
          if (s.remainingBits === 267) out.address = fmtAddr(s.loadAddress());
        } catch {
          /* not an address */
        }
        return out;
      }
      case 'tuple':
        return { type: 'tuple', items: stackToJson(it.items) };
      default:
        return { type: it.type };
    }
  });
}

function stackFromJson(args = []) {
  return args.map((a) => {
    if (a.type === 'int') return { type: 'int', value: parseBig(a.value, 'arg') };
    if (a.type === 'cell') return { type: 'cell', cell: parseCell(a.boc, 'arg') };
    if (a.type === 'slice') return { type: 'slice', cell: parseCell(a.boc, 'arg') };
    if (a.type === 'address') return { type: 'slice', cell: beginCell().storeAddress(parseAddr(a.value)).endCell() };
    if (a.type === 'null') return { type: 'null' };
    throw invalid(`unsupported stack arg type ${a.type}`);
  });
}

function channelParams(p) {
  return {
    payerKey: parseKey(need(p, 'payer_key'), 'payer_key'),
    payeeKey: parseKey(need(p, 'payee_key'), 'payee_key'),
    payer: parseAddr(need(p, 'payer'), 'payer'),
    payee: parseAddr(need(p, 'payee'), 'payee'),
    channelId: parseBig(need(p, 'channel_id'), 'channel_id'),
    challengePeriod: Number(need(p, 'challenge_period')),
  };
}

// ---- methods ---------------------------------------------------------------------------------
const METHODS = {
  async info() {
    return {
      label: LABEL,
      now: chain.now,
      code_hashes: { payment_channel: META.payment_channel.codeHashHex, registry: META.registry.codeHashHex },
      tolk_version: META.payment_channel.tolkVersion,
    };
  },

  /** {name, balance?} -> {address, balance}. Idempotent per name. */
  async create_wallet(p) {
    const name = String(need(p, 'name'));
    if (!wallets.has(name)) {
      const bal = p.balance !== undefined ? parseBig(p.balance, 'balance') : toNano('1000000');
      const w = await chain.treasury(name, { balance: bal, resetBalanceIfZero: false });
      wallets.set(name, w);
      known.set(fmtAddr(w.address), `wallet:${name}`);
      minted += await balanceOf(w.address);
    }
    const w = wallets.get(name);
    return { address: fmtAddr(w.address), balance: (await balanceOf(w.address)).toString() };
  },

  async get_balance(p) {
    const a = parseAddr(need(p, 'address'));
    return { balance: (await balanceOf(a)).toString(), status: await accountStatus(a) };
  },

  async now() {
    return { now: chain.now };
  },

  async set_now(p) {
    const t = Number(need(p, 'now'));
    if (!Number.isInteger(t) || t < (chain.now ?? 0)) throw invalid('now must be an integer not before the current time');
    chain.now = t;
    return { now: chain.now };
  },

  async advance_time(p) {
    const s = Number(need(p, 'seconds'));
    if (!Number.isInteger(s) || s < 0) throw invalid('seconds must be a non-negative integer');
    chain.now = (chain.now ?? 0) + s;
    return { now: chain.now };
  },

  /** Address a channel with these params will have (payee-side check of canonical init data). */
  async channel_address(p) {
    const init = channelStateInit(channelParams(p), CODE.payment_channel);
    return { address: fmtAddr(contractAddress(0, init)), data: init.data.toBoc().toString('base64') };
  },

  /** {from, payer_key, payee_key, payer, payee, channel_id, challenge_period, deposit, gas?} */
  async deploy_channel(p) {
    const w = wallet(need(p, 'from'));
    const init = channelStateInit(channelParams(p), CODE.payment_channel);
    const address = contractAddress(0, init);
    const deposit = parseBig(need(p, 'deposit'), 'deposit');
    const gas = p.gas !== undefined ? parseBig(p.gas, 'gas') : toNano('0.1');
    const r = await sendFrom(w, address, deposit + gas, topUpBody(deposit), true, init);
    known.set(fmtAddr(address), 'payment_channel');
    return { address: fmtAddr(address), ...r };
  },

  /** {from, to, value, body?: base64 BoC, bounce?: bool (default true), init?: {code, data}} */
  async send(p) {
    const w = wallet(need(p, 'from'));
    const to = parseAddr(need(p, 'to'), 'to');
    const value = parseBig(need(p, 'value'), 'value');
    const body = p.body ? parseCell(p.body, 'body') : undefined;
    const init = p.init ? { code: parseCell(p.init.code, 'init.code'), data: parseCell(p.init.data, 'init.data') } : undefined;
    return sendFrom(w, to, value, body, p.bounce ?? true, init);
  },

  /**
   * Injects an internal message from ANY address (emulator-only power, for tests of senders
   * that are not wallets here). {from_address, to, value, body?, bounce?}
   */
  async send_raw(p) {
    const from = parseAddr(need(p, 'from_address'), 'from_address');
    const to = parseAddr(need(p, 'to'), 'to');
    const value = parseBig(need(p, 'value'), 'value');
    const body = p.body ? parseCell(p.body, 'body') : beginCell().endCell();
    minted += value;
    const r = await chain.sendMessage(internal({ from, to, value, body, bounce: p.bounce ?? true }));
    const sums = record(r);
    const target = sums.find((s) => s.account === fmtAddr(to));
    return { success: target ? target.success : false, exit_code: target ? target.exitCode : null, destination: target ?? null, transactions: sums };
  },

  /** {address, method, args?: [{type:'int', value:'1'} | {type:'cell'|'slice', boc} | {type:'address', value}]} */
  async run_get_method(p) {
    const a = parseAddr(need(p, 'address'));
    if ((await accountStatus(a)) !== 'active') {
      return { exit_code: null, status: await accountStatus(a), stack: [] };
    }
    try {
      const r = await chain.runGetMethod(a, String(need(p, 'method')), stackFromJson(p.args));
      return { exit_code: r.exitCode, status: 'active', gas_used: r.gasUsed.toString(), stack: stackToJson(r.stack) };
    } catch (e) {
      if (e && e.exitCode !== undefined) return { exit_code: e.exitCode, status: 'active', stack: [] };
      throw e;
    }
  },

  /** Decoded channel state; status 'closed' once the account is gone. */
  async channel_state(p) {
    const a = parseAddr(need(p, 'address'));
    const status = await accountStatus(a);
    const balance = (await balanceOf(a)).toString();
    if (status !== 'active') return { status: 'closed', account_status: status, balance };
    const s = (await chain.runGetMethod(a, 'get_channel_state')).stackReader;
    const st = {
      state: s.readNumber(), deposit: s.readBigNumber().toString(), claimed: s.readBigNumber().toString(),
      seqno: s.readBigNumber().toString(), committed: s.readBigNumber().toString(),
      close_deadline: s.readNumber(), close_initiator: s.readNumber(),
    };
    const q = (await chain.runGetMethod(a, 'get_parties')).stackReader;
    const parties = {
      channel_id: q.readBigNumber().toString(), challenge_period: q.readNumber(),
      payer_key: q.readBigNumber().toString(16).padStart(64, '0'), payee_key: q.readBigNumber().toString(16).padStart(64, '0'),
      payer: fmtAddr(q.readAddress()), payee: fmtAddr(q.readAddress()),
    };
    return { status: st.state === 0 ? 'open' : 'closing', account_status: status, balance, ...st, ...parties };
  },

  /** {address?, limit?} newest last */
  async transactions(p = {}) {
    const limit = Number(p.limit ?? 50);
    let list = recent;
    if (p.address) {
      const a = fmtAddr(parseAddr(p.address));
      list = list.filter((s) => s.account === a);
    }
    return { transactions: list.slice(-limit) };
  },

  /** {from, owner?, min_deposit, min_challenge_period, max_challenge_period?, value?} */
  async deploy_registry(p) {
    const w = wallet(need(p, 'from'));
    const owner = p.owner ? parseAddr(p.owner, 'owner') : w.address;
    const init = registryStateInit({
      owner,
      minDeposit: parseBig(p.min_deposit ?? 0, 'min_deposit'),
      minChallengePeriod: Number(p.min_challenge_period ?? 0),
      maxChallengePeriod: p.max_challenge_period !== undefined ? Number(p.max_challenge_period) : undefined,
    }, CODE.registry);
    const address = contractAddress(0, init);
    const r = await sendFrom(w, address, parseBig(p.value ?? toNano('0.5'), 'value'), undefined, false, init);
    known.set(fmtAddr(address), 'registry');
    return { address: fmtAddr(address), ...r };
  },

  /** {from, address, action, hash? (+ name for add_model) | mrtd (hex) | require_tcb_check+tcb_statuses
   *  (names)+max_report_age | min_deposit+min_challenge_period(+max_challenge_period) | new_owner, value?} */
  async registry_update(p) {
    const w = wallet(need(p, 'from'));
    const a = parseAddr(need(p, 'address'));
    const action = String(need(p, 'action'));
    const statuses = p.tcb_statuses !== undefined ? [...p.tcb_statuses] : undefined;
    for (const st of statuses ?? []) {
      if (!TCB_STATUSES.includes(st)) throw invalid(`unknown TCB status ${st}`);
    }
    const args = {
      hash: p.hash !== undefined ? parseBig(p.hash, 'hash') : undefined,
      name: p.name,
      mrtd: p.mrtd,
      requireTcbCheck: Boolean(p.require_tcb_check),
      tcbStatuses: statuses?.reduce((mask, st) => mask | (1 << TCB_STATUSES.indexOf(st)), 0),
      maxReportAge: p.max_report_age !== undefined ? Number(p.max_report_age) : undefined,
      minDeposit: p.min_deposit !== undefined ? parseBig(p.min_deposit, 'min_deposit') : undefined,
      minChallengePeriod: p.min_challenge_period !== undefined ? Number(p.min_challenge_period) : undefined,
      maxChallengePeriod: p.max_challenge_period !== undefined ? Number(p.max_challenge_period) : undefined,
      newOwner: p.new_owner ? parseAddr(p.new_owner, 'new_owner') : undefined,
    };
    let body;
    try {
      body = registryBody(action, args);
    } catch (e) {
      throw invalid(String(e.message ?? e));
    }
    return sendFrom(w, a, parseBig(p.value ?? toNano('0.05'), 'value'), body, true);
  },

  /** Decoded registry policy. */
  async registry_state(p) {
    const a = parseAddr(need(p, 'address'));
    const g = (m) => chain.runGetMethod(a, m).then((r) => r.stackReader);
    const s = await g('get_params');
    const out = { version: s.readNumber(), min_deposit: s.readBigNumber().toString(), min_challenge_period: s.readNumber(), owner: fmtAddr(s.readAddress()) };
    out.max_challenge_period = s.readNumber();
    const hex = (k) => k.toString(16).padStart(64, '0');
    out.images = registryDictKeys((await g('get_images')).readCellOpt()).map(hex);
    out.models = registryModels((await g('get_models')).readCellOpt()).map((m) => ({ hash: hex(m.hash), name: m.name }));
    const m = await g('get_measurements');
    out.mrtds = registryMrtds(m.readCellOpt());
    out.rtmr_sets = registryDictKeys(m.readCellOpt()).map(hex);
    const require = m.readBoolean();
    const mask = m.readNumber();
    out.tcb = { require_tcb_check: require, tcb_statuses: TCB_STATUSES.filter((_, i) => mask & (1 << i)),
      max_report_age: m.readNumber() };
    return out;
  },

  /** Conservation check: sum of balances of all known accounts + burned == minted. */
  async total_supply() {
    let sum = 0n;
    for (const a of known.keys()) sum += await balanceOf(Address.parse(a));
    return { sum_balances: sum.toString(), burned: burnedTotal.toString(), minted: minted.toString(), accounts: known.size };
  },

  async save_state(p = {}) {
    return saveState(p.path ?? statePath);
  },
};

// ---- JSON-lines loop -------------------------------------------------------------------------
function stdoutWrite(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function handle(line, write = stdoutWrite) {
  let req;
  try {
    req = JSON.parse(line);
  } catch {
    write({ id: null, error: { code: -32700, message: 'parse error' } });
    return;
  }
  const id = req.id ?? null;
  const fn = typeof req.method === 'string' && Object.hasOwn(METHODS, req.method) ? METHODS[req.method] : null;
  if (!fn) {
    write({ id, error: { code: -32601, message: `unknown method ${req.method}` } });
    return;
  }
  try {
    write({ id, result: await fn(req.params ?? {}) });
  } catch (e) {
    const code = e instanceof RpcError ? e.code : -32000;
    write({ id, error: { code, message: String(e?.message ?? e).split('\n')[0] } });
  }
}

await init();
let queue = Promise.resolve();
let listenAddr = null;
const listenArg = argValue('--listen');
if (listenArg) {
  const i = listenArg.lastIndexOf(':');
  const host = listenArg.slice(0, i);
  const port = Number(listenArg.slice(i + 1));
  const server = createServer((sock) => {
    const send = (obj) => { if (!sock.destroyed) sock.write(JSON.stringify(obj) + '\n'); };
    const lines = createInterface({ input: sock });
    lines.on('line', (line) => {
      if (!line.trim()) return;
      queue = queue.then(() => handle(line, send)); // one global queue: requests from all clients serialize
    });
    sock.on('error', () => sock.destroy());
    // readline re-emits its input's errors (a client that reset its connection): never let one end the chain
    lines.on('error', () => sock.destroy());
  });
  await new Promise((resolve) => server.listen(port, host, resolve));
  const a = server.address();
  listenAddr = `${a.address}:${a.port}`;
}
process.stderr.write(`localchain: ${LABEL}; ready (now=${chain.now}${listenAddr ? `, listening on ${listenAddr}` : ''})\n`);
stdoutWrite({ id: null, result: { ready: true, label: LABEL, now: chain.now, listen: listenAddr } });

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  queue = queue.then(() => handle(line));
});
rl.on('close', () => {
  queue.then(() => {
    if (statePath) saveState();
    process.exit(0);
  });
});
process.on('SIGTERM', () => {
  queue.then(() => {
    if (statePath) saveState();
    process.exit(0);
  });
});
