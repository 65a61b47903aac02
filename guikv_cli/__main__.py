"""`python -m guikv_cli ...` (and `accelerate launch -m guikv_cli ...`) runs the guikv command."""

from guikv_cli.app import main

main()
