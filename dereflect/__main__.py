from dereflect.cli import main

main()
