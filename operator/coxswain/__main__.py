"""`python -m coxswain` is the `coxswain` command."""

from coxswain.cli.main import main

raise SystemExit(main())
