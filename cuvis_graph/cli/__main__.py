"""``python -m cuvis_graph.cli``."""

from cuvis_graph.cli.app import main

raise SystemExit(main())
