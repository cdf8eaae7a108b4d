"""The official SimCLR TF1 network, rebuilt with TensorFlow's own tf.compat.v1 layers (needs TensorFlow).

Follows google-research/simclr ``resnet.py`` and ``model_util.py`` (SPEC-DETAILS 2-3) function by function
(``fixed_padding``, ``conv2d_fixed_padding``, ``sk_conv2d``, ``bottleneck_block`` with the ResNet-D
shortcut, the stems with the 3x3/2 'SAME' max pool, ``linear_layer``, ``projection_head``,
``supervised_head``) in inference mode, so that TensorFlow itself names the variables (``conv2d_k``,
``batch_normalization_k`` in creation order) and computes the reference outputs. It does not look at the
PyTorch code. Requires ``tf_keras`` with ``TF_USE_LEGACY_KERAS=1`` for the tf.compat.v1.layers API.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf1 = tf.compat.v1
BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def batch_norm_relu(x, relu=True, center=True):
    x = tf1.layers.batch_normalization(x, axis=-1, momentum=0.9, epsilon=1e-5, center=center, training=False)
    return tf.nn.relu(x) if relu else x


def fixed_padding(x, k):
    beg = (k - 1) // 2
    return tf.pad(x, [[0, 0], [beg, k - 1 - beg], [beg, k - 1 - beg], [0, 0]])


def conv2d_fixed_padding(x, filters, k, strides):
    if strides > 1:
        x = fixed_padding(x, k)
    return tf1.layers.conv2d(x, filters, k, strides, padding="SAME" if strides == 1 else "VALID", use_bias=False)


def sk_conv2d(x, filters, strides, sk_ratio=0.0625, min_dim=32):
    x = batch_norm_relu(conv2d_fixed_padding(x, 2 * filters, 3, strides))
    x = tf.stack(tf.split(x, 2, axis=3))
    mid = max(int(filters * sk_ratio), min_dim)
    g = tf.reduce_mean(tf.reduce_sum(x, axis=0), [1, 2], keepdims=True)
    g = batch_norm_relu(tf1.layers.conv2d(g, mid, 1, 1, use_bias=False))
    mixing = tf1.layers.conv2d(g, 2 * filters, 1, 1, use_bias=False)
    mixing = tf.nn.softmax(tf.stack(tf.split(mixing, 2, axis=3)), axis=0)
    return tf.reduce_sum(x * mixing, axis=0)


def bottleneck_block(x, filters, strides, use_projection, sk):
    shortcut = x
    if use_projection:
        if sk:  # ResNet-D
            shortcut = fixed_padding(x, 2) if strides > 1 else x
            shortcut = tf1.layers.average_pooling2d(shortcut, 2, strides, padding="SAME" if strides == 1 else "VALID")
            shortcut = conv2d_fixed_padding(shortcut, 4 * filters, 1, 1)
        else:
            shortcut = conv2d_fixed_padding(x, 4 * filters, 1, strides)
        shortcut = batch_norm_relu(shortcut, relu=False)
    x = batch_norm_relu(conv2d_fixed_padding(x, filters, 1, 1))
    if sk:
        x = sk_conv2d(x, filters, strides)
    else:
        x = batch_norm_relu(conv2d_fixed_padding(x, filters, 3, strides))
    x = batch_norm_relu(conv2d_fixed_padding(x, 4 * filters, 1, 1), relu=False)
    return tf.nn.relu(x + shortcut)


def resnet(x, depth, width, sk):
    if sk:
        x = batch_norm_relu(conv2d_fixed_padding(x, 64 * width // 2, 3, 2))
        x = batch_norm_relu(conv2d_fixed_padding(x, 64 * width // 2, 3, 1))
        x = conv2d_fixed_padding(x, 64 * width, 3, 1)
    else:
        x = conv2d_fixed_padding(x, 64 * width, 7, 2)
    x = batch_norm_relu(x)
    x = tf1.layers.max_pooling2d(x, 3, 2, padding="SAME")
    for g, n in enumerate(BLOCKS[depth]):
        for j in range(n):
            x = bottleneck_block(x, 64 * 2**g * width, (1 if g == 0 else 2) if j == 0 else 1, j == 0, sk)
    return tf.reduce_mean(x, [1, 2])


def linear_layer(x, units, use_bias, use_bn, name):
    with tf1.variable_scope(name, reuse=tf1.AUTO_REUSE):
        x = tf1.layers.dense(x, units, use_bias=use_bias and not use_bn)
        if use_bn:
            x = batch_norm_relu(x, relu=False, center=use_bias)
    return x


def build(depth, width, sk, head_layers=3, num_classes=1000, proj_dim=128, size=224):
    """A graph with input ``x`` (N, size, size, 3) and outputs ``h``, ``z`` (before L2 norm), ``logits`` (on h)."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, size, size, 3], name="x")
        with tf1.variable_scope("base_model"):
            h = resnet(x, depth, width, sk)
        z = h
        with tf1.variable_scope("head_contrastive", reuse=tf1.AUTO_REUSE):
            for j in range(head_layers):
                last = j == head_layers - 1
                z = linear_layer(z, proj_dim if last else int(h.shape[-1]), not last, True, f"nl_{j}")
                z = z if last else tf.nn.relu(z)
        with tf1.variable_scope("head_supervised"):
            logits = linear_layer(h, num_classes, True, False, "linear_layer")
        tf1.train.get_or_create_global_step()
    return graph, {"x": x, "h": h, "z": z, "logits": logits}


def randomize(sess, graph, seed=0):
    """Random weights and non-trivial BN statistics for every variable (as TF variables, in place)."""
    rng = np.random.default_rng(seed)
    with graph.as_default():
        for v in tf1.global_variables():
            shape, name = v.shape.as_list(), v.op.name
            if name == "global_step":
                value = np.array(250228, dtype=np.int64)
            elif name.endswith("kernel"):
                value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
            elif name.endswith("moving_variance"):
                value = rng.uniform(0.5, 2.0, shape)
            elif name.endswith("gamma"):
                value = rng.uniform(0.3, 1.0, shape)
            else:  # beta, moving_mean, bias
                value = 0.1 * rng.standard_normal(shape)
            v.load(value.astype(v.dtype.as_numpy_dtype), sess)


def write_checkpoint(prefix, depth, width, sk, size, images, seed=0):
    """Save a random official network at ``prefix``; returns TF's (h, z, logits) on ``images`` (N, H, W, 3)."""
    tf1.disable_eager_execution()
    graph, t = build(depth, width, sk, size=size)
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        randomize(sess, graph, seed)
        tf1.train.Saver().save(sess, str(prefix), write_meta_graph=False)
        return sess.run([t["h"], t["z"], t["logits"]], {t["x"]: images})
