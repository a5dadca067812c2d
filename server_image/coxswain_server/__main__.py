import sys

from coxswain_server.cli import main

sys.exit(main())
