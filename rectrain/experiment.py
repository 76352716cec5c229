"""Compatibility name: the experiments tooling lives in :mod:`rectrain.experiments`
(records, sweeps, tables, plots, commands). ``import rectrain.experiment`` keeps
every name it had, private helpers included (experiment configs use some);
``python -m rectrain.experiment ...`` is the ``rectrain`` command line."""

from rectrain.experiments import commands as _commands
from rectrain.experiments import plots as _plots
from rectrain.experiments import records as _records
from rectrain.experiments import sweeps as _sweeps
from rectrain.experiments import tables as _tables

for _module in (_records, _sweeps, _tables, _plots, _commands):
  globals().update({k: v for k, v in vars(_module).items()
                    if not k.startswith("__") and k not in ("annotations",)})
del _module


def main(argv=None) -> int:
  """``python -m rectrain.experiment ...`` is the ``rectrain`` command line."""
  from rectrain.cli import main as cli_main
  return cli_main(argv)


if __name__ == "__main__":
  import sys
  sys.exit(main())
