"""Online optimizers as optax transforms, with row-wise (sparse) application.

Every optimizer's per-coordinate math is written once (``*_math`` functions)
and used both by the dense ``optax.GradientTransformation`` and by the
:class:`SparseOptimizer` applied row-wise to embedding tables with
:func:`sparse_apply`. This package never imports flax.

Note: the package attributes ``rectrain.optim.ftrl``, ``.adagrad``, ``.adamom``,
``.ogd`` are the optimizer *functions*; import from the submodules with
``from rectrain.optim.ftrl import ftrl_math``.
"""

from rectrain.optim.adagrad import (adagrad, adagrad_sparse, rowwise_adagrad,
                                    rowwise_adagrad_sparse, scale_by_adagrad,
                                    scale_by_rowwise_adagrad)
from rectrain.optim.lazy_adam import adam_sparse
from rectrain.optim.adamom import adamom, adamom_sparse, scale_by_adamom
from rectrain.optim.delay import delay_compensation
from rectrain.optim.ftrl import ftrl, ftrl_sparse
from rectrain.optim.ogd import ogd, ogd_sparse, scale_by_ogd, sgd_sparse
from rectrain.optim.registry import get_optimizer, get_sparse_optimizer
from rectrain.optim.sparse import (SPARSE_NAMES, SparseOptimizer, gather_rows,
                                   scatter_rows, sparse_apply)
from rectrain.optim.stale import (StaleParams, fixed_staleness, random_staleness,
                                  round_robin_staleness, round_robin_worker,
                                  stale_params_get, stale_params_init, stale_params_push)
