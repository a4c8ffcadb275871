import sys

from jaxecg.cli import main

sys.exit(main())
