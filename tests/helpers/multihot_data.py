"""A small TSV with multi-hot and sequence columns whose clicks depend on them.

Columns: ``click``, ``user``, ``item``, ``tags`` (0-4 tags of 12,
``|``-separated), ``history`` (the user's previous items, most recent first,
``|``-separated, at most 12, so a max length of 8 cuts some; empty for a new
user), ``ts``. Items fall into 6 clusters
(``item % 6``). The click probability rises with the tag ``t1``, falls with ``t2``, and rises with the
share of the user's last 5 items in the candidate item's cluster, so a
model that reads nothing but ``user`` / ``item`` gets only part of it.
"""

import numpy as np

SCHEMA = "click:label,user:cat,item:cat,tags:multi:{pool}:4:|,history:multi:seq:8:|,ts:time"


def write_multihot_tsv(path, rows: int = 8000, seed: int = 0, header: bool = True) -> str:
  rng = np.random.default_rng(seed)
  history = {}
  lines = ["click\tuser\titem\ttags\thistory\tts"] if header else []
  for i in range(rows):
    user = int(rng.integers(0, 400))
    item = int(rng.integers(0, 300))
    tags = sorted(set(rng.integers(0, 12, size=int(rng.integers(0, 5))).tolist()))
    past = history.get(user, [])
    recent = past[-5:]
    same = sum(1 for x in recent if x % 6 == item % 6) / max(len(recent), 1)
    logit = -1.0 + 2.5 * (1 in tags) - 2.0 * (2 in tags) + 2.5 * same
    click = int(rng.random() < 1 / (1 + np.exp(-logit)))
    lines.append(f"{click}\tu{user}\ti{item}\t{'|'.join(f't{t}' for t in tags)}\t"
                 f"{'|'.join(f'i{x}' for x in reversed(past[-12:]))}\t{1_000_000 + i}")
    # the user's liked items join the history (so it says what they click)
    if click:
      history[user] = past + [item]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)
