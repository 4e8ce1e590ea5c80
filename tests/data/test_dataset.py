import numpy as np
from scipy import sparse

from mosaicvi import MosaicVI
from mosaicvi._constants import REGISTRY_KEYS
from mosaicvi.data import PaddedRows


def test_padded_rows_gathers_present_rows_and_zeros_the_rest():
    dense = np.arange(12, dtype=np.float32).reshape(4, 3)
    rows = np.array([2, -1, 0, 3, -1])
    for matrix in (dense, sparse.csr_matrix(dense)):
        out = PaddedRows(matrix, rows)[np.array([0, 1, 2, 4])]
        np.testing.assert_array_equal(out, [dense[2], np.zeros(3), dense[0], np.zeros(3)])
        assert PaddedRows(matrix, rows)[np.array([1, 4])].shape == (2, 3)


def test_loader_yields_each_cells_own_counts(trimodal):
    MosaicVI.setup_mudata(
        trimodal,
        modalities={"rna": "rna", "atac": "atac", "protein": "protein"},
        batch_key="batch",
    )
    model = MosaicVI(trimodal)
    tensors = next(iter(model._make_data_loader(trimodal, batch_size=trimodal.n_obs)))
    for j, mod in enumerate(("rna", "atac", "protein")):
        x = tensors[f"X_{mod}"].numpy()
        a = trimodal.mod[mod]
        present = tensors[REGISTRY_KEYS.PRESENCE][:, j].numpy().astype(bool)
        np.testing.assert_array_equal(present, trimodal.obsm[mod].reshape(-1))
        expected = a[trimodal.obs_names[present]].X.toarray()
        np.testing.assert_array_equal(x[present], expected)
        assert np.all(x[~present] == 0)
    codes = tensors[REGISTRY_KEYS.BATCH].numpy()[:, 0]
    cats = list(np.unique(trimodal.obs["batch"].astype(str)))
    np.testing.assert_array_equal(codes, [cats.index(b) for b in trimodal.obs["batch"]])
