from lexlora.cli import main

main()
