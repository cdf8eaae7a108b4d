"""Write the TensorFlow-made checkpoint fixtures of tests/test_tf_bundle.py (run with TensorFlow installed).

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu
    /tmp/tfenv/bin/python tests/data/make_tf_fixtures.py

Writes, with ``tf.compat.v1.train.Saver`` (the TF1 name-based format of the released SimCLR checkpoints):

- ``tf_bundle/small``: variables of several dtypes and shapes (scalars, 1-4-D, an empty tensor, names with
  scopes) and a partitioned variable, which TensorFlow saves as two slices of one full tensor;
- ``tf_bundle/sharded``: a ``sharded=True`` save of variables on two CPU devices: two data shards;
- ``tf_bundle/expected.npz``: the values written (key = variable name with "/" replaced by "|").

The values are drawn from a fixed numpy seed, so re-running the script rewrites the same tensors.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1
tf1.disable_eager_execution()
OUT = Path(__file__).resolve().parent / "tf_bundle"


def small_values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2020)
    return {
        "base_model/conv2d/kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
        "base_model/batch_normalization/gamma": rng.standard_normal(4).astype(np.float32),
        "float64_matrix": rng.standard_normal((3, 5)),
        "int32_vector": rng.integers(-1000, 1000, 7).astype(np.int32),
        "global_step": np.array(250228, dtype=np.int64),
        "bool_mask": rng.random(6) > 0.5,
        "half_vector": rng.standard_normal(5).astype(np.float16),
        "uint8_image": rng.integers(0, 256, (2, 3, 3), dtype=np.uint8),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scope/with.dots-and_underscores/v": np.array([1.5, -2.25], dtype=np.float32),
    }


def write_small(prefix: Path, expected: dict[str, np.ndarray]) -> None:
    values = small_values()
    rng = np.random.default_rng(7)
    part_value = rng.standard_normal((200, 3)).astype(np.float32)
    bf16_value = rng.standard_normal(4).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        for name, value in values.items():
            tf1.Variable(value, name=name)
        bf16 = tf1.Variable(tf.constant(bf16_value, dtype=tf.bfloat16), name="bfloat16_vector")
        # A partitioned variable: saved as two slices ([0:100] and [100:200]) of one [200, 3] tensor.
        part = tf1.get_variable(
            "head/partitioned_kernel",
            shape=[200, 3],
            dtype=tf.float32,
            initializer=tf1.zeros_initializer(),
            partitioner=tf1.fixed_size_partitioner(2),
        )
        assigns = []
        for v in part:
            start = v._get_save_slice_info().var_offset[0]
            assigns.append(v.assign(part_value[start : start + v.shape[0]]))
        saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(assigns)
            saver.save(sess, str(prefix), write_meta_graph=False, write_state=False)
            expected["bfloat16_vector"] = sess.run(tf.cast(bf16, tf.float32))
    expected.update(values)
    expected["head/partitioned_kernel"] = part_value


def write_sharded(prefix: Path, expected: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(11)
    values = {
        "shard_a/kernel": rng.standard_normal((4, 6)).astype(np.float32),
        "shard_b/kernel": rng.standard_normal((6, 2)).astype(np.float32),
        "shard_b/bias": rng.standard_normal(2).astype(np.float32),
    }
    graph = tf.Graph()
    with graph.as_default():
        for name, value in values.items():
            with tf1.device("/cpu:0" if name.startswith("shard_a") else "/cpu:1"):
                tf1.Variable(value, name=name)
        saver = tf1.train.Saver(sharded=True)
        config = tf1.ConfigProto(device_count={"CPU": 2})
        with tf1.Session(graph=graph, config=config) as sess:
            sess.run(tf1.global_variables_initializer())
            saver.save(sess, str(prefix), write_meta_graph=False, write_state=False)
    expected.update({f"sharded:{k}": v for k, v in values.items()})


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    expected: dict[str, np.ndarray] = {}
    write_small(OUT / "small", expected)
    write_sharded(OUT / "sharded", expected)
    np.savez(OUT / "expected.npz", **{k.replace("/", "|"): v for k, v in expected.items()})
    for f in sorted(os.listdir(OUT)):
        print(f"{f}: {(OUT / f).stat().st_size} bytes")


if __name__ == "__main__":
    main()
