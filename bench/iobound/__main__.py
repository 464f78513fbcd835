from bench.iobound.harness import main

main()
