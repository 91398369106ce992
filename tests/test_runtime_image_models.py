"""Image networks of several ops in a row, at image-network sizes, bit-exact with TFLM.

Shaped like third-party int8 models converted from PyTorch: NCHW input with a TRANSPOSE
to NHWC, explicit PAD before stride-2 VALID convolutions (PyTorch pads symmetrically where
TF's SAME would pad bottom/right only, so the converter keeps the PAD), wide channel counts,
residual ADDs, a global MEAN whose output shares the input's quantisation (how PyTorch
quantizers treat average pooling), and a 1,000-way classifier. The single-op cases of
test_runtime_fastpaths.py reach each kernel path alone; these chain them, so a parameter
computed wrong for one layer's shape shows at the logits.
"""

import shutil

import numpy as np
import pytest

import runtime_support as rs

tf = pytest.importorskip("tensorflow")


def _pad(x, p=1, value=None):
    paddings = [[0, 0], [p, p], [p, p], [0, 0]]
    return tf.pad(x, paddings) if value is None else tf.pad(x, paddings, constant_values=value)


class _Net:
    def __init__(self, seed):
        self.W = rs.Weights(seed)

    def conv(self, x, cout, k, s=1, pad="SAME", act="relu6"):
        cin = x.shape[-1]
        f = self.W((k, k, cin, cout), 1.0 / np.sqrt(k * k * cin))
        return rs.act(tf.nn.conv2d(x, f, s, pad) + self.W((cout,), 0.1), act)

    def dw(self, x, k=3, s=1, pad="SAME", act="relu6"):
        c = x.shape[-1]
        f = self.W((k, k, c, 1), 1.0 / 3)
        return rs.act(tf.nn.depthwise_conv2d(x, f, [1, s, s, 1], pad) + self.W((c,), 0.1), act)

    def inverted_residual(self, x, expand, cout, s):
        y = self.conv(x, x.shape[-1] * expand, 1)
        y = self.dw(_pad(y), s=s, pad="VALID") if s == 2 else self.dw(y)
        y = self.conv(y, cout, 1, act=None)
        return x + y if s == 1 and cout == x.shape[-1] else y

    def classifier(self, x, n=1000):
        x = tf.reduce_mean(x, axis=[1, 2])
        return tf.matmul(x, self.W((x.shape[-1], n), 0.05))


def mobilenet_like(size):
    """MobileNetV2-shaped: 3x3 s2 stem after an explicit PAD, inverted residuals (1x1 expand,
    depthwise 3x3 with PAD + stride-2 VALID where it downsamples, 1x1 project, ADD), up to 384
    channels, a 1x1 to 320, MEAN, FC 1000."""
    net = _Net(5)

    def fn(x):
        x = tf.transpose(x, [0, 2, 3, 1])
        x = net.conv(_pad(x), 32, 3, 2, "VALID")
        x = net.conv(net.dw(x), 16, 1, act=None)
        for expand, cout, s in ((6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 64, 2), (6, 64, 1),
                                (6, 96, 2)):
            x = net.inverted_residual(x, expand, cout, s)
        x = net.conv(x, 320, 1)
        return net.classifier(x)
    return fn, (3, size, size)


def resnet_like(size):
    """ResNet-shaped: 7x7 s2 stem after PAD 3, PAD + 3x3 s2 max pool, basic blocks with PAD +
    3x3 s2 VALID convs and 1x1 s2 shortcuts, ADD then RELU, up to 256 channels, MEAN, FC."""
    net = _Net(11)

    def block(x, cout, s):
        y = net.conv(_pad(x), cout, 3, s, "VALID", act="relu") if s == 2 else net.conv(x, cout, 3, act="relu")
        y = net.conv(y, cout, 3, act=None)
        sc = net.conv(x, cout, 1, s, "VALID", act=None) if s == 2 or cout != x.shape[-1] else x
        return tf.nn.relu(sc + y)

    def fn(x):
        x = tf.transpose(x, [0, 2, 3, 1])
        x = net.conv(_pad(x, 3), 32, 7, 2, "VALID", act="relu")
        x = tf.nn.max_pool2d(_pad(x, 1, -10.0), 3, 2, "VALID")
        for cout, s in ((32, 1), (64, 2), (128, 2), (256, 2)):
            x = block(x, cout, s)
        return net.classifier(x, 100)
    return fn, (3, size, size)


def _same_quant_mean(buf):
    return rs.requantize_output(buf, "MEAN", same_as_input=True)


MODELS = {
    "mobilenet_224": (lambda: mobilenet_like(224), (0.0, 1.0)),
    "resnet_96": (lambda: resnet_like(96), (0.4, 0.8)),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def image_model(request):
    build, (mean, std) = MODELS[request.param]
    fn, shape = build()
    buf = _same_quant_mean(rs.to_int8_tflite(fn, shape, seed=1, mean=mean, std=std))
    return request.param, buf


def test_image_model_bit_exact(image_model, tmp_path):
    name, buf = image_model
    ops = rs.model_op_names(buf)
    assert ops[0] == "TRANSPOSE", ops
    # the PADs before stride-2 convs survive conversion (not folded into SAME padding)
    assert sum(o in ("PAD", "PADV2") for o in ops) >= 3, ops
    xs = rs.random_inputs(buf, 2, 3)
    report = rs.assert_bit_exact(buf, xs, tmp_path)
    assert report["op_counts"].get("MEAN") == 1 and report["op_counts"].get("ADD", 0) >= 2, report["op_counts"]


@pytest.mark.skipif(not shutil.which("qemu-system-arm"), reason="qemu-system-arm missing")
def test_dsp_fast_paths_bit_exact_qemu(tmp_path):
    """The paths that differ on Cortex-M4 (DSP extension: SMLAD on packed weight pairs for
    1x1 convs with 4/8/12/16/20 channels per group, the SMLAD dot product beyond 64 channels,
    SMMULR requantisation, SSAT clamps) in one chained model at 24x24 (576 pixels, above the
    512-pixel table thresholds), cross-compiled and run on QEMU mps2-an386."""
    net = _Net(23)
    W = net.W

    def fn(x):
        y = net.conv(x, 8, 1, act=None)                     # gc 4
        y = net.conv(y, 12, 1, act="relu")                  # gc 8
        y = net.conv(y, 16, 1, act=None)                    # gc 12
        y = net.conv(y, 20, 1, act="relu6")                 # gc 16
        y = net.conv(y, 70, 1, act=None)                    # gc 20 (generic, packed)
        y = net.conv(y, 22, 1, act="relu")                  # gc 70 (dot product)
        y = net.conv(y, 24, 1, act=None)                    # gc 22 (generic, not packed)
        y = net.dw(y, act=None)                             # dw_fast, 16 + 8 channel chunks
        z = y + net.dw(y)                                   # ADD tables (13,824 elements)
        g = tf.math.sigmoid(tf.reduce_mean(z, axis=[1, 2], keepdims=True))
        z = z * g                                           # per-channel MUL table
        z = tf.nn.depthwise_conv2d(z, W((1, 1, 24, 1), 0.7), [1, 1, 1, 1], "SAME")  # 1x1 table
        return net.conv(_pad(z), 16, 3, 2, "VALID", act="relu")
    buf = rs.to_int8_tflite(fn, (24, 24, 4), seed=2, mean=0.2, std=1.3)
    xs = rs.random_inputs(buf, 2, 7)
    rs.assert_bit_exact(buf, xs, tmp_path, target="qemu-an386")
