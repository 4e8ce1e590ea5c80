import mudata as md
import numpy as np
from PIL import Image

from mosaicvi._cli import main


def test_demo_writes_latent_imputation_and_umap(tmp_path, capsys):
    main(["demo", "--output-dir", str(tmp_path), "--max-epochs", "2"])
    assert "wrote h5mu" in capsys.readouterr().out
    out = md.read_h5mu(tmp_path / "mosaicvi_demo.h5mu")
    assert out.obsm["X_mosaicvi"].shape == (1600, 20)
    assert np.isfinite(out.obsm["X_mosaicvi"]).all()
    imputed = out.mod["protein_imputed"]
    assert imputed.shape == (400, 224)
    assert set(imputed.obs["batch"]) == {"p1_0"}
    assert np.isfinite(imputed.X).all() and (imputed.X >= 0).all()
    with Image.open(tmp_path / "mosaicvi_demo_umap.png") as img:
        assert img.size[0] > 600 and img.size[1] > 300
