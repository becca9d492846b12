"""transformers' own model tests (``ModelTesterMixin``, ``ConfigTester``) run against HyLo, written the way
transformers writes them for its hybrids (Bamba, Zamba2, Qwen3-Next): a model tester building a 4-layer
``A,L16,M,G`` config (one layer per mixer type) and a test class. It overrides two tests, each as a transformers
hybrid does: ``test_attention_outputs`` (attentions from the attention layers only: Bamba, Qwen3-Next) and
``test_num_layers_is_small`` (one layer per mixer type: Lfm3, LaraMini in that test's exceptions). It skips nothing
itself; what is skipped is skipped by the shared tests' own conditions (no accelerator, flash-attn or deepspeed; not
a composite, MoE or sliding-window model; no TP plan).

The shared test files come from the installed transformers release's source distribution (see
:mod:`tests.model.transformers_suite`; ``python tests/tools/fetch_transformers_tests.py`` prepares them).
"""

from __future__ import annotations

import unittest
from unittest import mock

import torch
from transformers.models.auto import modeling_auto
from transformers.testing_utils import torch_device

from hylo_model import MIXERS, HyLoConfig, HyLoForCausalLM, HyLoModel
from hylo_model.model import CACHE_FIELD
from tests.model.transformers_suite import GenerationTesterMixin, load

common = load("test_modeling_common")
ConfigTester = load("test_configuration_common").ConfigTester
ModelTesterMixin, ids_tensor = common.ModelTesterMixin, common.ids_tensor

LAYOUT = "A,L16,M,G"
ATTENTION_LAYERS = 2  # A and L16 (MLA) return attention weights; M and G (linear) return none


class HyLoModelTester:
    def __init__(self, parent, batch_size=13, seq_length=7, is_training=True, use_input_mask=True, use_labels=True,
                 vocab_size=99, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                 intermediate_size=37, max_position_embeddings=512, pad_token_id=0):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_input_mask = use_input_mask
        self.use_labels = use_labels
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = len(LAYOUT.split(","))
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.pad_token_id = pad_token_id

    def get_config(self) -> HyLoConfig:
        return HyLoConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings, pad_token_id=self.pad_token_id,
            hylo_layout=LAYOUT, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
            mamba_num_heads=4, mamba_head_dim=8, mamba_d_state=8, mamba_n_groups=2, mamba_chunk_size=4,
            gdn_num_heads=2, gdn_num_v_heads=4, gdn_head_k_dim=8, gdn_head_v_dim=8, gdn_chunk_size=4,
        )

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_mask = torch.tril(torch.ones_like(input_ids).to(torch_device)) if self.use_input_mask else None
        token_labels = ids_tensor([self.batch_size, self.seq_length], self.vocab_size) if self.use_labels else None
        return self.get_config(), input_ids, input_mask, token_labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, input_mask, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": input_mask}

    def create_and_check_model(self, config, input_ids, input_mask, token_labels):
        model = HyLoModel(config).to(torch_device).eval()
        model(input_ids, attention_mask=input_mask)
        result = model(input_ids)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))

    def create_and_check_for_causal_lm(self, config, input_ids, input_mask, token_labels):
        model = HyLoForCausalLM(config).to(torch_device).eval()
        result = model(input_ids, attention_mask=input_mask, labels=token_labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.seq_length, self.vocab_size))
        self.parent.assertTrue(torch.isfinite(result.loss))

    def create_and_check_decoder_model_past_large_inputs(self, config, input_ids, input_mask, token_labels):
        model = HyLoForCausalLM(config).to(torch_device).eval()
        cache = getattr(model(input_ids, attention_mask=input_mask, use_cache=True), CACHE_FIELD)
        next_tokens = ids_tensor((self.batch_size, 3), config.vocab_size)
        next_mask = ids_tensor((self.batch_size, 3), vocab_size=2)
        next_input_ids = torch.cat([input_ids, next_tokens], dim=-1)
        next_attention_mask = torch.cat([input_mask, next_mask], dim=-1)
        no_past = model(next_input_ids, attention_mask=next_attention_mask, output_hidden_states=True)
        with_past = model(next_tokens, attention_mask=next_attention_mask, cache=cache, output_hidden_states=True)
        # The last layer's input at the new real tokens (a padded query sees every key, including padded ones that
        # the two runs fill differently, so padded positions may differ).
        real = next_mask.bool()
        torch.testing.assert_close(with_past.hidden_states[-2][real], no_past.hidden_states[-2][:, -3:][real],
                                   atol=1e-5, rtol=1e-4)


class HyLoModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (HyLoModel, HyLoForCausalLM)
    # As Bamba's test: keep `test_cpu_offload` away from a split inside the smallest layer
    model_split_percents = [0.5, 0.7, 0.8]
    # The test dates a model by its config file's copyright line, which ours has none of; run it all the same.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        # The shared tests find a model's role from transformers' own name tables (a base model, a causal LM);
        # list HyLo there as a model inside transformers is, for the duration of this class.
        cls._names = [mock.patch.dict(modeling_auto.MODEL_MAPPING_NAMES, {"hylo": "HyLoModel"}),
                      mock.patch.dict(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, {"hylo": "HyLoForCausalLM"})]
        for patch in cls._names:
            patch.start()

    @classmethod
    def tearDownClass(cls):
        for patch in cls._names:
            patch.stop()

    def setUp(self):
        self.model_tester = HyLoModelTester(self)
        self.config_tester = ConfigTester(self, config_class=HyLoConfig, hidden_size=64)

    def test_config(self):
        tester = self.config_tester
        tester.create_and_test_config_common_properties()
        tester.create_and_test_config_to_json_string()
        tester.create_and_test_config_to_json_file()
        tester.create_and_test_config_from_and_save_pretrained()
        tester.create_and_test_config_from_and_save_pretrained_subfolder()
        tester.create_and_test_config_with_num_labels()
        tester.create_and_test_config_from_pretrained_custom_kwargs()
        tester.check_config_can_be_init_without_params()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_causal_lm(self):
        self.model_tester.create_and_check_for_causal_lm(*self.model_tester.prepare_config_and_inputs())

    def test_decoder_model_past_with_large_inputs(self):
        self.model_tester.create_and_check_decoder_model_past_large_inputs(
            *self.model_tester.prepare_config_and_inputs())

    def test_attention_outputs(self):
        """As Bamba's and Qwen3-Next's: attention weights come from the attention-style layers only (here the
        attention and MLA layers), in layer order."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        config.return_dict = True
        seq_len = self.model_tester.seq_length
        expected = [self.model_tester.num_attention_heads, seq_len, seq_len]
        for model_class in self.all_model_classes:
            inputs_dict["output_attentions"] = True
            inputs_dict["output_hidden_states"] = False
            model = model_class._from_config(config, attn_implementation="eager").to(torch_device).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            self.assertEqual(len(outputs.attentions), ATTENTION_LAYERS)

            del inputs_dict["output_attentions"]
            config.output_attentions = True
            model = model_class(config).to(torch_device).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            self.assertEqual(len(outputs.attentions), ATTENTION_LAYERS)
            for weights in outputs.attentions:
                self.assertListEqual(list(weights.shape[-3:]), expected)
            out_len = len(outputs)

            inputs_dict["output_attentions"] = True
            inputs_dict["output_hidden_states"] = True
            model = model_class(config).to(torch_device).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            self.assertEqual(out_len + 1, len(outputs))
            self.assertEqual(len(outputs.attentions), ATTENTION_LAYERS)
            self.assertListEqual(list(outputs.attentions[0].shape[-3:]), expected)
            config.output_attentions = False

    def test_num_layers_is_small(self):
        # transformers' test allows 2 layers, and 3 for hybrids that keep one layer per mixer type (its exceptions
        # list Lfm3ModelTest and LaraMiniModelTest); HyLo has four mixer types, one layer each.
        self.assertLessEqual(self.model_tester.num_hidden_layers, len(MIXERS))
