"""Flax CTR models over embedding tables held outside the modules.

See rectrain/models/tables.py for the tables, rectrain/models/ctr.py for the
models and rectrain/models/registry.py for configs and parameter counts.
"""

from rectrain.models.ctr import DCNv2, DeepFM, DLRM, DNN, EMBEDDING, FM, LINEAR, LR, WideDeep
from rectrain.models.din import DIN
from rectrain.models.layers import MLP, CrossNetwork, FirstOrder, dot_interaction, fm_second_order
from rectrain.models.registry import (MODELS, build_model, count_params, default_model_config,
                                      example_inputs)
from rectrain.models.tables import TableSpec, init_table, init_tables, lookup

__all__ = [
    "CrossNetwork", "DCNv2", "DeepFM", "DIN", "DLRM", "DNN", "EMBEDDING", "FM", "FirstOrder", "LINEAR",
    "LR", "MLP", "MODELS", "TableSpec", "WideDeep", "build_model", "count_params",
    "default_model_config", "dot_interaction", "example_inputs", "fm_second_order",
    "init_table", "init_tables", "lookup",
]
