"""Logical axis names: the vocabulary layers use to describe their arrays.

Layers name parameter and activation dimensions with these constants; rule sets
(`rules.py`) map them onto mesh axes. Parameters, activations and the KV cache have separate
names so each can be sharded on its own terms.
"""

# Parameters.
EMBED = "embed"  # d: residual width
MLP = "mlp"  # f: MLP hidden width
HEADS = "heads"  # h: query heads
KV_HEADS = "kv_heads"  # g: key/value heads
HEAD_DIM = "kv"  # k: per-head width
VOCAB = "vocab"  # v
LAYERS = "layers"  # l: the scanned layer axis
NORM = "norm"  # scale/bias vectors of norms (always replicated)
POSITION = "position"  # rows of a learned position table
RELPOS_BUCKETS = "relpos_buckets"  # rows of a T5 relative-position bias table
CLASSES = "classes"  # outputs of a classification head
POOLED = "pooled"  # hidden width of an output head (MLM transform, classifier pooler)

# Activations.
ACT_BATCH = "act_batch"
ACT_LENGTH = "act_length"  # queries and the residual stream: split by sequence parallelism
ACT_KV_LENGTH = "act_kv_length"  # keys/values attended to: whole on every device of `sequence`
ACT_EMBED = "act_embed"
ACT_MLP = "act_mlp"
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"
ACT_HEAD_DIM = "act_kv"
ACT_VOCAB = "act_vocab"

# KV cache.
CACHE_LAYERS = "cache_layers"
CACHE_BATCH = "cache_batch"
CACHE_LENGTH = "cache_length"
CACHE_KV_HEADS = "cache_kv_heads"
CACHE_HEAD_DIM = "cache_kv"

PARAM_AXES = (EMBED, MLP, HEADS, KV_HEADS, HEAD_DIM, VOCAB, LAYERS, NORM, POSITION,
              RELPOS_BUCKETS, CLASSES, POOLED)
ACTIVATION_AXES = (ACT_BATCH, ACT_LENGTH, ACT_KV_LENGTH, ACT_EMBED, ACT_MLP, ACT_HEADS,
                   ACT_KV_HEADS, ACT_HEAD_DIM, ACT_VOCAB)
CACHE_AXES = (CACHE_LAYERS, CACHE_BATCH, CACHE_KV_HEADS, CACHE_LENGTH, CACHE_HEAD_DIM)
ALL_AXES = PARAM_AXES + ACTIVATION_AXES + CACHE_AXES

# Mesh axes, outermost first: `tensor` is innermost because its collectives run every layer on
# activations and want the fastest links (devices adjacent in the mesh share a host/NVLink).
DATA = "data"
FSDP = "fsdp"
SEQUENCE = "sequence"  # sequence/context parallelism: activations split along their length
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, SEQUENCE, TENSOR)
# Mesh axes some rule set splits parameters over: more than one device on one of them and a
# large fully replicated parameter is a layout mistake (report.check_replicated).
PARAM_MESH_AXES = (FSDP, SEQUENCE, TENSOR)
