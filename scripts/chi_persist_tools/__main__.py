"""`python -m chi_persist_tools`: the command itself, with the Python that runs it (as the
`chi-persist` console script in ./venv/bin does); ./chi-persist also makes ./venv first."""

import sys

from chi_persist_tools.cli import main

sys.exit(main())
