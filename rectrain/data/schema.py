"""Feature schemas: what each column of a CTR dataset is, and the named dataset cards.

A :class:`Schema` lists a file's columns in order, each with a role:

* ``label``: the click (0/1; or a number with ``threshold``: label = value >=
  threshold, e.g. a MovieLens rating >= 4). Exactly one column is the label.
* ``cat``: a categorical value (any string or integer), hashed per field into
  ``data.cat_buckets`` buckets (bucket 0: missing), or mapped by the id map.
* ``num``: a number; ``log1p`` (``log1p(max(x, 0))``, a dense input, missing
  -> 0) or ``bucket`` (``floor(ln(x)^2)`` for ``x > 2``, the Criteo winners'
  bucketisation, then hashed like a categorical field).
* ``time``: the event time, ``unix_s`` / ``unix_ms`` or ``yymmddhh`` (Avazu's
  hour, read as UTC); becomes the batch's ``time`` (seconds).
* ``label_time``: when the label arrived (a conversion timestamp, same
  formats; empty = a negative). Without a ``label`` column it is the label
  (present = 1); the batch gets ``delay`` = label time - event time (``inf``
  for a negative), the input of the delayed-feedback joiner.
* ``multi``: several categorical values in one cell (MovieLens genres
  ``Action|Comedy``, a user's recent items), argument ``POOL:MAXLEN:DELIM``
  (defaults ``sum:8:|``): at most ``MAXLEN`` values kept (the first ones;
  the values cut off are counted in the stream's report), each hashed into
  the field's buckets, and pooled into one field by ``sum`` or ``mean``
  (EmbeddingBag semantics: an empty cell pools to zeros), or ``seq``: kept as
  a padded behaviour sequence for a sequence model (DIN), mean-pooled for the
  others. ``DELIM`` is one character or ``pipe``, ``comma``, ``semicolon``,
  ``colon``, ``space``, ``tab``.
* ``ignore``: read, not used (an impression id).

A schema is a dataset card's name (:data:`CARDS`) or a spec string of
comma-separated ``name:role[:arg]`` entries (``name:multi[:POOL[:MAXLEN[:DELIM]]]``), e.g.
``"id:ignore,click:label,hour:time:yymmddhh,*:cat"``; ``*`` stands for every
remaining column of the file's header (a file with a header line only).

File format (``tsv`` / ``csv`` / ``parquet``) and header (``auto``: the first
line is a header if it names the schema's columns) come with the card and can
be overridden by config (``data.format``, ``data.header``).

No jax here; :mod:`rectrain.data.table` reads files by a schema.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

ROLES = ("label", "cat", "num", "multi", "time", "label_time", "ignore")
POOLS = ("sum", "mean", "seq")
DELIMITERS = {"pipe": "|", "comma": ",", "semicolon": ";", "colon": ":", "space": " ", "tab": "\t"}
MULTI_DEFAULT = "sum:8:|"
NUM_TRANSFORMS = ("log1p", "bucket")
TIME_FORMATS = ("unix_s", "unix_ms", "yymmddhh")
FORMATS = ("tsv", "csv", "parquet")


@dataclasses.dataclass(frozen=True)
class Column:
  """One column: ``name``, ``role`` (:data:`ROLES`) and the role's argument ``arg``
  (``num``: a transform of :data:`NUM_TRANSFORMS`; ``time``: a format of
  :data:`TIME_FORMATS`; ``label``: an optional threshold)."""

  name: str
  role: str
  arg: str = ""


@dataclasses.dataclass(frozen=True)
class Schema:
  """A dataset's columns in file order, its format and header rule."""

  name: str
  columns: tuple[Column, ...]
  format: str = "tsv"
  header: str = "auto"  # auto | yes | no
  source: str = ""      # where the data comes from (a card's documentation)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(c.name for c in self.columns)

  def of_role(self, role: str) -> tuple[Column, ...]:
    return tuple(c for c in self.columns if c.role == role)

  @property
  def label(self) -> Column | None:
    """The label column; None when the label is a ``label_time``'s presence."""
    lab = self.of_role("label")
    return lab[0] if lab else None

  @property
  def time(self) -> Column | None:
    t = self.of_role("time")
    return t[0] if t else None

  @property
  def label_time(self) -> Column | None:
    t = self.of_role("label_time")
    return t[0] if t else None

  @property
  def dense(self) -> tuple[Column, ...]:
    """The dense inputs, in order: ``num`` columns with ``log1p``."""
    return tuple(c for c in self.columns if c.role == "num" and c.arg == "log1p")

  @property
  def fields(self) -> tuple[Column, ...]:
    """The single-valued embedding fields, in order: ``cat`` columns, then bucketised
    ``num`` columns."""
    return self.of_role("cat") + tuple(
        c for c in self.columns if c.role == "num" and c.arg == "bucket")

  @property
  def multi(self) -> tuple[Column, ...]:
    """The multi-hot fields, in order (after :attr:`fields` in the layout)."""
    return self.of_role("multi")

  def with_header(self, header: Sequence[str]) -> "Schema":
    """The schema with ``*`` expanded over the ``header`` columns it does not name."""
    if not any(c.name == "*" for c in self.columns):
      return self
    star = [c for c in self.columns if c.name == "*"][0]
    named = {c.name for c in self.columns if c.name != "*"}
    missing = sorted(named - set(header))
    if missing:
      raise ValueError(f"schema {self.name!r}: columns {missing} are not in the header "
                       f"{list(header)}")
    by_name = {c.name: c for c in self.columns}
    cols = tuple(by_name.get(h, Column(h, star.role, star.arg)) for h in header)
    return dataclasses.replace(self, columns=cols)


def _check(schema: Schema) -> Schema:
  where = f"schema {schema.name!r}"
  if schema.format not in FORMATS:
    raise ValueError(f"{where}: format {schema.format!r}: must be one of {FORMATS}")
  if schema.header not in ("auto", "yes", "no"):
    raise ValueError(f"{where}: header {schema.header!r}: must be auto, yes or no")
  seen = set()
  for c in schema.columns:
    if c.role not in ROLES:
      raise ValueError(f"{where}: column {c.name!r}: role {c.role!r} must be one of {ROLES}")
    if c.name in seen:
      raise ValueError(f"{where}: column {c.name!r} appears twice")
    seen.add(c.name)
    if c.role == "num" and c.arg not in NUM_TRANSFORMS:
      raise ValueError(f"{where}: column {c.name!r}: num transform {c.arg!r} must be one of "
                       f"{NUM_TRANSFORMS}")
    if c.role in ("time", "label_time") and c.arg not in TIME_FORMATS:
      raise ValueError(f"{where}: column {c.name!r}: time format {c.arg!r} must be one of "
                       f"{TIME_FORMATS}")
    if c.role == "multi":
      multi_options(c, where)
    if c.role == "label" and c.arg:
      try:
        float(c.arg)
      except ValueError:
        raise ValueError(f"{where}: column {c.name!r}: label threshold {c.arg!r} is not a "
                         "number") from None
  labels = len(schema.of_role("label"))
  if labels > 1 or (labels == 0 and not schema.of_role("label_time")):
    raise ValueError(f"{where}: needs exactly one label column (or a label_time column)")
  for role in ("time", "label_time"):
    if len(schema.of_role(role)) > 1:
      raise ValueError(f"{where}: at most one {role} column")
  if schema.of_role("label_time") and not schema.of_role("time"):
    raise ValueError(f"{where}: a label_time column needs the event time column (role time)")
  if len([c for c in schema.columns if c.name == "*"]) > 1:
    raise ValueError(f"{where}: at most one '*' entry")
  if not (schema.fields or schema.multi) and not any(c.name == "*" and c.role in ("cat", "num")
                                   for c in schema.columns):
    raise ValueError(f"{where}: no categorical field (role cat, multi, or num:bucket)")
  return schema


def multi_options(col: Column, where: str = "schema") -> tuple[str, int, str]:
  """``(pool, max_len, delimiter)`` of a ``multi`` column (its ``POOL:MAXLEN:DELIM`` arg)."""
  parts = (col.arg or MULTI_DEFAULT).split(":")
  defaults = MULTI_DEFAULT.split(":")
  if len(parts) > 3:
    raise ValueError(f"{where}: column {col.name!r}: multi argument {col.arg!r} must be "
                     "POOL:MAXLEN:DELIM")
  pool, max_len, delim = (parts + defaults[len(parts):])[:3]
  if pool not in POOLS:
    raise ValueError(f"{where}: column {col.name!r}: pool {pool!r} must be one of {POOLS}")
  try:
    n = int(max_len)
  except ValueError:
    n = 0
  if n < 1:
    raise ValueError(f"{where}: column {col.name!r}: max length {max_len!r} must be an int >= 1")
  delim = DELIMITERS.get(delim, delim)
  if len(delim) != 1:
    raise ValueError(f"{where}: column {col.name!r}: delimiter {delim!r} must be one "
                     f"character or one of {sorted(DELIMITERS)}")
  return pool, n, delim


def parse_spec(spec: str, name: str = "custom", format: str = "tsv",
               header: str = "auto") -> Schema:
  """A schema from ``"name:role[:arg],..."`` (see the module docstring)."""
  cols = []
  for entry in (e.strip() for e in spec.split(",")):
    if not entry:
      continue
    parts = entry.split(":")
    if len(parts) >= 2 and parts[1] == "multi" and len(parts) <= 5 and parts[0]:
      cols.append(Column(parts[0], "multi", ":".join(parts[2:])))
      continue
    if len(parts) not in (2, 3) or not parts[0]:
      raise ValueError(f"schema spec entry {entry!r}: must be name:role or name:role:arg "
                       "(name:multi[:POOL[:MAXLEN[:DELIM]]])")
    role = parts[1]
    arg = parts[2] if len(parts) == 3 else {"num": "log1p", "time": "unix_s",
                                            "label_time": "unix_s"}.get(role, "")
    cols.append(Column(parts[0], role, arg))
  return _check(Schema(name, tuple(cols), format, header))


def _criteo() -> Schema:
  cols = ([Column("label", "label")] + [Column(f"I{i}", "num", "log1p") for i in range(1, 14)]
          + [Column(f"C{i}", "cat") for i in range(1, 27)])
  return Schema("criteo_kaggle", tuple(cols), "tsv", "no",
                "Criteo Display Advertising Challenge train.txt (Kaggle, 45.8M rows, 7 days, "
                "CC BY-NC-SA 4.0); Criteo 1TB day_0..day_23 have the same layout")


AVAZU_CAT = ("C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
             "app_domain", "app_category", "device_id", "device_ip", "device_model",
             "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20",
             "C21")


def _avazu() -> Schema:
  cols = ([Column("id", "ignore"), Column("click", "label"), Column("hour", "time", "yymmddhh")]
          + [Column(n, "cat") for n in AVAZU_CAT])
  return Schema("avazu", tuple(cols), "csv", "auto",
                "Avazu CTR prediction (Kaggle) train.csv: 40.4M rows, 10 days (2014-10-21.."
                "30) in hour order, 24 columns with a header; non-commercial research use")


def _criteo_conversion_logs() -> Schema:
  cols = ([Column("click_ts", "time", "unix_s"), Column("conv_ts", "label_time", "unix_s")]
          + [Column(f"I{i}", "num", "log1p") for i in range(1, 9)]
          + [Column(f"C{i}", "cat") for i in range(1, 10)])
  return Schema("criteo_conversion_logs", tuple(cols), "tsv", "no",
                "Criteo conversion logs (Chapelle 2014, 'Modeling delayed feedback in display "
                "advertising') data.txt: click timestamp, conversion timestamp or empty, 8 "
                "integer and 9 hashed categorical features, tab-separated; the delayed-"
                "feedback benchmark of ES-DFM and DEFER")


def _movielens_1m() -> Schema:
  cols = (Column("rating", "label", "4"), Column("user_id", "cat"), Column("movie_id", "cat"),
          Column("genres", "multi", "mean:6:|"), Column("gender", "cat"), Column("age", "cat"),
          Column("occupation", "cat"), Column("zip", "cat"),
          Column("history", "multi", "seq:20:|"), Column("timestamp", "time", "unix_s"))
  return Schema("movielens_1m", cols, "parquet", "auto",
                "GroupLens MovieLens 1M (1,000,209 ratings of 3,706 movies by 6,040 users, "
                "2000-04..2003-02; research use, no redistribution) as written by `rectrain "
                "data prepare movielens_1m RAW_DIR OUT`: rating >= 4 is the label, genres "
                "multi-hot, history the user's earlier movies (a behaviour sequence for DIN)")


def _criteo_attribution() -> Schema:
  # By name from the header; every other column (uid, conversion, conversion_timestamp,
  # attribution, cost, cpo, ...: the outcome) is ignored.
  cols = ([Column("timestamp", "time", "unix_s"), Column("click", "label"),
           Column("campaign", "cat")] + [Column(f"cat{i}", "cat") for i in range(1, 10)]
          + [Column("*", "ignore")])
  return Schema("criteo_attribution", tuple(cols), "tsv", "yes",
                "Criteo Attribution Modeling for Bidding (criteo/criteo-attribution-dataset: "
                "16.5M impressions over 30 days, tab-separated with a header; CC BY-NC-SA "
                "4.0): click is the label, campaign and cat1..cat9 the fields; the other "
                "columns (uid, conversion and attribution outcomes, cost) are ignored")


def _taobao_ad() -> Schema:
  cols = ([Column("clk", "label"), Column("time_stamp", "time", "unix_s")]
          + [Column(c, "cat") for c in ("user", "adgroup_id", "pid")] + [Column("nonclk", "ignore")]
          + [Column(c, "cat") for c in ("cate_id", "campaign_id", "customer", "brand")]
          + [Column("price", "num", "log1p")]
          + [Column(c, "cat") for c in ("cms_segid", "cms_group_id", "final_gender_code",
                                        "age_level", "pvalue_level", "shopping_level",
                                        "occupation", "new_user_class_level")]
          + [Column("hist_cate", "multi", "seq:20:|"), Column("hist_brand", "multi", "seq:20:|")])
  return Schema("taobao_ad", tuple(cols), "parquet", "auto",
                "Alibaba Taobao display ads (Tianchi dataset 56, the DIN/DIEN data: 26M "
                "impressions of 1.14M users over 8 days, 2017-05-06..13; Tianchi's research "
                "terms) as written by `rectrain data prepare taobao_ad RAW_DIR OUT`: clk the "
                "label, ad and user features joined, hist_cate / hist_brand the user's 20 "
                "latest behaviour events strictly before the impression (seq, for DIN with "
                "model.target=cate_id)")


def _kuairand() -> Schema:
  from rectrain.data.prepare import KUAIRAND_OUTCOMES  # no jax there (nor pyarrow at import)
  cols = ([Column("time_ms", "time", "unix_ms"), Column("is_click", "label")]
          + [Column(c, "ignore") for c in KUAIRAND_OUTCOMES if c != "is_click"]
          + [Column(c, "ignore") for c in ("date", "upload_dt")]
          + [Column("duration_ms", "num", "log1p"), Column("*", "cat")])
  return Schema("kuairand", tuple(cols), "parquet", "auto",
                "KuaiRand (Gao et al. CIKM 2022; Kuaishou short-video logs with random "
                "exposures, CC BY-SA 4.0): Pure 1.4M / 1K 11.7M interactions over 2022-04-08.."
                "05-08, as written by `rectrain data prepare kuairand RAW_DIR OUT`: time_ms "
                "event time, is_click the label (data.label=is_like etc.), every other outcome "
                "ignored, user and video features hashed")


# The dataset cards: a named schema each (the README's dataset table documents them).
CARDS = {"criteo_kaggle": _criteo, "criteo_terabyte": _criteo, "avazu": _avazu,
         "criteo_conversion_logs": _criteo_conversion_logs, "movielens_1m": _movielens_1m,
         "criteo_attribution": _criteo_attribution, "taobao_ad": _taobao_ad,
         "kuairand": _kuairand}


def with_label(schema: Schema, label: str) -> Schema:
  """The schema with column ``label`` (``NAME`` or ``NAME:THRESHOLD``) as the label; the
  card's label column is then ignored (e.g. KuaiRand's ``is_like`` instead of ``is_click``)."""
  name, _, threshold = label.partition(":")
  if name in [c.name for c in schema.columns if c.role == "label_time"]:
    raise ValueError(f"schema {schema.name!r}: {name!r} is the label time; its presence is "
                     "the label already")
  if name not in schema.names:
    raise ValueError(f"schema {schema.name!r}: label column {name!r} is not one of its "
                     f"columns {list(schema.names)}")
  cols = tuple(Column(c.name, "label", threshold) if c.name == name else
               Column(c.name, "ignore") if c.role == "label" else c for c in schema.columns)
  return dataclasses.replace(schema, columns=cols)


def get_schema(name_or_spec: str, format: str = "", header: str = "", label: str = "") -> Schema:
  """A card (:data:`CARDS`) by name, or a spec string; ``format`` / ``header`` / ``label``
  (:func:`with_label`) override."""
  if name_or_spec in CARDS:
    schema = CARDS[name_or_spec]()
    schema = dataclasses.replace(schema, name=name_or_spec)
  elif ":" in name_or_spec:
    schema = parse_spec(name_or_spec)
  else:
    raise ValueError(f"config data.schema={name_or_spec!r}: not a dataset card "
                     f"({sorted(CARDS)}) nor a spec 'name:role[:arg],...'")
  if format:
    schema = dataclasses.replace(schema, format=format)
  if header:
    schema = dataclasses.replace(schema, header=header)
  if label:
    schema = with_label(schema, label)
  return _check(schema)


def schema_of(data) -> Schema:
  """The schema a run config's ``data`` section names (``data.schema`` with its ``format``,
  ``header`` and ``label`` overrides)."""
  return get_schema(data.schema, data.get("format", ""), data.get("header", ""),
                    data.get("label", ""))
