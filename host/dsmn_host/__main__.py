from dsmn_host.cli import main

raise SystemExit(main())
