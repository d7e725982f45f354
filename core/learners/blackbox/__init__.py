"""Model-based (black-box) meta-learners under the learner kind "black-box" (switch `network`):
MANN, SNAIL, Meta Networks, the LSTM meta-learner and a conditional neural process, each with its
paper's defaults as a preset (docs/BLACKBOX.md):

- mann (network mann): switches embedding raw, train_on episode, shuffle true; mann_controller 200,
  mann_memory_slots 128, mann_memory_width 40, mann_read_heads 4, mann_gamma 0.95;
- snail: shuffle true; snail_filters 128;
- metanet: order first; metanet_hidden 64, metanet_pairs 10;
- meta-lstm: order first; meta_lstm_hidden 20 (and alpha: its input gate's initial value);
- cnp: objective nll; cnp_hidden 128.

Every one reads beta (Adam's step on the meta-parameters) and the meta-batch; none reads the
temperature; only the LSTM meta-learner reads alpha and inner_steps (it has an inner loop).
"""

from __future__ import annotations

from ...registry import register_learner_kind, register_preset
from .cnp import NeuralProcess
from .common import BlackBoxLearner, kind_switches, make_blackbox_learner
from .mann import MANN
from .metalstm import LSTMMetaLearner
from .metanet import MetaNetwork
from .snail import SNAIL

BLACKBOX_LEARNERS = (MANN, SNAIL, MetaNetwork, LSTMMetaLearner, NeuralProcess)
PRESETS = {"mann": "mann", "snail": "snail", "metanet": "metanet", "meta-lstm": "meta-lstm", "cnp": "cnp"}

register_learner_kind("black-box", make_blackbox_learner, switches=kind_switches(BLACKBOX_LEARNERS),
                      doc="model-based (black-box) meta-learners: MANN, SNAIL, Meta Networks, the LSTM meta-learner, "
                          "a conditional neural process (switch `network`; core.learners.blackbox)")
for _preset, _network in PRESETS.items():
    register_preset(_preset, "black-box", network=_network)

__all__ = ["BlackBoxLearner", "make_blackbox_learner", "MANN", "SNAIL", "MetaNetwork", "LSTMMetaLearner",
           "NeuralProcess", "BLACKBOX_LEARNERS"]
