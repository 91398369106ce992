"""The paper's augmentations, each one batched on the training device.

Mixup and the device-response augmentation act on raw log-mel (N, 256, 44): both are meant to
change the recording, not the normalised picture of it. SpecAugment acts on the model input
(N, 2, 256, 44) after deltas and per-clip normalisation, as in the paper.

All randomness comes from torch's global generator so that seeding it per epoch makes a run
repeatable and resumable.
"""

import torch


def mixup(x, y_scene, y_coarse, alpha=0.2, fraction=1.0):
    """Mix the first `fraction` of the batch with a shuffled copy of itself, one Beta(α, α) weight.

    The paper mixes the whole batch early on and only half of it later, so the network also
    sees clean clips near the end of training. Targets are soft (one-hot rows mixed alike).
    """
    n = int(round(x.shape[0] * fraction))
    if n < 2 or alpha <= 0:
        return x, y_scene, y_coarse
    lam = torch.distributions.Beta(alpha, alpha).sample().to(x.device)
    perm = torch.randperm(n).to(x.device)

    def mix(t):
        t = t.clone()
        t[:n] = lam * t[:n] + (1 - lam) * t[:n][perm]
        return t

    return mix(x), mix(y_scene), mix(y_coarse)


def device_response(logmel, is_reference, table, skip_one_in=13):
    """Make reference-device (a) clips sound like another device.

    Adds one randomly chosen row of the (device − a) mean log-mel difference table to every
    device-a clip, broadcast over time. Device a dominates TAU22's training split; this moves
    its clips towards the other devices. Like the paper, the whole batch is left alone one time
    in `skip_one_in`.
    """
    if table is None or len(table) == 0 or not bool(is_reference.any()):
        return logmel
    if skip_one_in and int(torch.randint(skip_one_in, ())) == 0:
        return logmel
    rows = torch.randint(len(table), (logmel.shape[0],)).to(table.device)
    shift = table[rows] * is_reference.to(logmel.dtype)[:, None]        # N, 256
    return logmel + shift[:, :, None]


def _stripe_mask(n, length, stripes, max_width, device):
    """(n, length) bool: `stripes` bands per row, each of width 0..max_width at a random start."""
    width = torch.randint(max_width + 1, (n, stripes)).to(device)
    start = (torch.rand(n, stripes).to(device) * (length - width + 1).float()).long()
    pos = torch.arange(length, device=device)[None, None, :]
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])
    return inside.any(dim=1)


def spec_augment(x, time_stripes=2, time_width=2, freq_stripes=2, freq_width=2):
    """Zero random time and frequency stripes of the (N, C, 256, 44) input, the same for all channels."""
    n, _, n_mels, n_frames = x.shape
    keep = torch.ones(n, 1, n_mels, n_frames, dtype=torch.bool, device=x.device)
    if freq_stripes and freq_width:
        keep &= ~_stripe_mask(n, n_mels, freq_stripes, freq_width, x.device)[:, None, :, None]
    if time_stripes and time_width:
        keep &= ~_stripe_mask(n, n_frames, time_stripes, time_width, x.device)[:, None, None, :]
    return x * keep
