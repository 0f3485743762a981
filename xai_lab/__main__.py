from xai_lab.cli import main

raise SystemExit(main())
