from cocoon_node.cli import main

main()
