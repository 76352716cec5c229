"""Nothing silently ignored: every protocol honours a config feature or refuses it by name."""

import pytest

from rectrain.configs import apply_overrides, default_config
from rectrain.train import features

# One setting that turns each feature on (its keys as the error names them).
TURN_ON = {
    "mesh": ["mesh.shape=(2, 1)"],
    "async_sim": ["train.async_sim.enabled=True"],
    "serving": ["serving.sync_tables_s=3600"],
    "idmap": ["idmap.enabled=True"],
    "learn": ["train.learn=False"],
    "warm_start": ["train.warm_start.path=/nonexistent/ckpt"],
    "checkpoints": ["train.checkpoint_every=4"],
    "offline": ["offline.epochs=1"],
    "delayed": ["delayed.method=vanilla"],
}


def test_every_feature_has_a_switch_and_every_section_a_place():
  assert set(TURN_ON) == set(features.FEATURES)
  sections = set(default_config().keys())
  unplaced = sections - features.COMMON_SECTIONS - features.FEATURE_SECTIONS
  assert not unplaced, f"config sections {unplaced}: add them to a feature or COMMON_SECTIONS"
  for name, sets in TURN_ON.items():
    c = apply_overrides(default_config(), sets)
    assert features.active_features(c) == [name], name
  assert features.active_features(default_config()) == []


def _runner(protocol):
  if protocol == "stream":
    from rectrain.train.loop import train_stream
    return train_stream
  if protocol == "offline":
    from rectrain.train.loop import train_offline
    return train_offline
  from rectrain.train.delayed import train_delayed
  return train_delayed


SELECTOR = {"stream": [], "offline": ["offline.epochs=1"], "delayed": ["delayed.method=vanilla"]}
CASES = [(p, f) for p in features.HONOURED for f in features.FEATURES
         if f not in features.HONOURED[p]]


@pytest.mark.parametrize("protocol,feature", CASES, ids=[f"{p}-{f}" for p, f in CASES])
def test_a_feature_the_protocol_ignores_is_refused_by_name(protocol, feature, tmp_path):
  c = apply_overrides(default_config(), ["data.max_rows=2048", "data.batch_size=512",
                                         "train.progress=False"] + SELECTOR[protocol])
  c = apply_overrides(c, TURN_ON[feature])
  key = features.FEATURES[feature][0].split(" ")[0].split("=")[0]
  with pytest.raises(ValueError, match=f"the {protocol} protocol does not support.*{key}"):
    _runner(protocol)(c, workdir=str(tmp_path))


def test_every_refusal_says_why():
  refused = {(p, f) for p, f in CASES}
  assert refused == set(features.WHY_NOT), refused ^ set(features.WHY_NOT)
