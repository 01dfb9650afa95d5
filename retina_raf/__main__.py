from retina_raf.cli import main

main()
