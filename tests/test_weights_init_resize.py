"""MODEL.WEIGHTS_INIT at another resolution: position embeddings go through the trunk's resize."""

import torch

import vissl_models


def vissl_checkpoint(model):
    return {"classy_state_dict": {"base_model": model.get_classy_state(deep_copy=True)}, "type": "consolidated"}


def save(tmp_path, obj, name="ckpt.torch"):
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


def test_weights_init_resizes_position_embeddings_for_another_resolution(tmp_path):
    """Fine-tuning at another resolution: the trunk's interpolate_position_embedding is applied."""
    vit = {"PATCH_SIZE": 4, "NUM_LAYERS": 2, "NUM_HEADS": 2, "HIDDEN_DIM": 8, "MLP_DIM": 16}

    def convit(size, weights=""):
        torch.manual_seed(0)
        cfg = vissl_models.load_config({"MODEL": {
            "TRUNK": {"NAME": "convit", "VISION_TRANSFORMERS": {**vit, "IMAGE_SIZE": size},
                      "CONVIT": {"N_GPSA_LAYERS": 1, "LOCALITY_DIM": 2}},
            "HEAD": {"PARAMS": [["mlp", {"dims": [8, 4]}]]},
            "WEIGHTS_INIT": {"PARAMS_FILE": weights}}}).MODEL
        return vissl_models.build_model(cfg, load_weights=bool(weights))

    small = convit(16)
    path = save(tmp_path, vissl_checkpoint(small))
    big = convit(24, path)
    assert big.trunk.pos_embedding.shape == (1, 36, 8)
    assert "trunk.pos_embedding" in big.weights_init_report.loaded
    with torch.no_grad():
        expected = big.trunk.interpolate_position_embedding(small.trunk.pos_embedding)
    torch.testing.assert_close(big.trunk.pos_embedding.detach(), expected)
    torch.testing.assert_close(big.trunk.patch_embed.proj.weight, small.trunk.patch_embed.proj.weight)
