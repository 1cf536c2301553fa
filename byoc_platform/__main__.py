from byoc_platform.cli import main

main()
