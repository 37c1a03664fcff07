from traitortrack.cli import main

raise SystemExit(main())
