"""Payments: vouchers for TON payment channels and the chains they settle on."""
