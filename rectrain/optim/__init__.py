"""Online optimizers as optax transforms, applied densely or row-wise to tables.

Every optimizer is one ``optax.GradientTransformation``; :func:`sparse_apply`
applies any transform to the touched rows of an embedding table
(:mod:`rectrain.optim.sparse`), so table optimizers chain (clipping, weight
decay, schedules) like dense ones. This package never imports flax.

Note: the package attributes ``rectrain.optim.ftrl``, ``.adagrad``, ``.adamom``,
``.ogd`` are the optimizer *functions*; import from the submodules with
``from rectrain.optim.ftrl import ftrl_math``.
"""

from rectrain.optim.adagrad import (adagrad, rowwise_adagrad, scale_by_adagrad,
                                    scale_by_rowwise_adagrad)
from rectrain.optim.adamom import adamom, scale_by_adamom
from rectrain.optim.delay import delay_compensation
from rectrain.optim.ftrl import ftrl
from rectrain.optim.ogd import ogd, scale_by_ogd
from rectrain.optim.registry import (SPARSE_NAMES, adagrad_sparse, adam_sparse, adamom_sparse,
                                     ftrl_sparse, get_optimizer, get_sparse_optimizer,
                                     ogd_sparse, rowwise_adagrad_sparse, sgd_sparse)
from rectrain.optim.sparse import (SparseOptimizer, gather_rows, is_row_leaf, reset_state_rows,
                                   rowwise, scatter_rows, sparse_apply)
from rectrain.optim.stale import (StaleParams, fixed_staleness, random_staleness,
                                  round_robin_staleness, round_robin_worker,
                                  stale_params_get, stale_params_init, stale_params_push)
