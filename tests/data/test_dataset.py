import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import sparse

from mosaicvi import MosaicVI
from mosaicvi._constants import REGISTRY_KEYS
from mosaicvi.data import PaddedRows, SparseRows
from mosaicvi.nn import dense, row_sums, take_rows


def test_padded_rows_gathers_present_rows_and_zeros_the_rest():
    dense = np.arange(12, dtype=np.float32).reshape(4, 3)
    rows = np.array([2, -1, 0, 3, -1])
    for matrix in (dense, sparse.csr_matrix(dense)):
        out = PaddedRows(matrix, rows)[np.array([0, 1, 2, 4])]
        np.testing.assert_array_equal(out, [dense[2], np.zeros(3), dense[0], np.zeros(3)])
        assert PaddedRows(matrix, rows)[np.array([1, 4])].shape == (2, 3)


@st.composite
def _mosaic_rows(draw):
    """A count matrix, each MuData cell's row in it (or -1) and a minibatch of cells."""
    n_rows = draw(st.integers(1, 12))
    n_cols = draw(st.integers(1, 9))
    values = st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.0, 7.0])
    matrix = draw(arrays(np.float32, (n_rows, n_cols), elements=values))
    rows = np.array(draw(st.lists(st.integers(-1, n_rows - 1), min_size=1, max_size=15)))
    batch = np.array(draw(st.lists(st.integers(0, len(rows) - 1), min_size=0, max_size=10)))
    return matrix, rows, batch.astype(int)


@settings(max_examples=60, deadline=None)
@given(_mosaic_rows(), st.sampled_from(["csr", "csc"]))
def test_sparse_gather_equals_the_dense_rows(case, fmt):
    matrix, rows, batch = case
    expected = PaddedRows(matrix, rows)[batch]
    out = SparseRows(sparse.csr_matrix(matrix).asformat(fmt), rows)[batch]
    assert out.is_sparse_csr and out.dtype == torch.float32
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out.to_dense().numpy(), expected)
    np.testing.assert_array_equal(row_sums(out).numpy()[:, 0], expected.sum(1))
    if len(batch):
        pick = torch.from_numpy(batch[::-1].copy() % len(batch))
        np.testing.assert_array_equal(dense(take_rows(out, pick)).numpy(), expected[pick.numpy()])


def test_sparse_rows_share_the_users_arrays():
    matrix = sparse.random(50, 40, density=0.1, format="csr", dtype=np.float64, random_state=0)
    reader = SparseRows(matrix, np.arange(50))
    assert np.shares_memory(reader.arrays[2].numpy(), matrix.data)
    assert reader[np.array([3, 4])].values().dtype == torch.float32


def test_loader_yields_each_cells_own_counts(trimodal):
    MosaicVI.setup_mudata(
        trimodal,
        modalities={"rna": "rna", "atac": "atac", "protein": "protein"},
        batch_key="batch",
    )
    model = MosaicVI(trimodal)
    tensors = next(iter(model._make_data_loader(trimodal, batch_size=trimodal.n_obs)))
    for j, mod in enumerate(("rna", "atac", "protein")):
        x = dense(tensors[f"X_{mod}"]).numpy()
        a = trimodal.mod[mod]
        present = tensors[REGISTRY_KEYS.PRESENCE][:, j].numpy().astype(bool)
        np.testing.assert_array_equal(present, trimodal.obsm[mod].reshape(-1))
        expected = a[trimodal.obs_names[present]].X.toarray()
        np.testing.assert_array_equal(x[present], expected)
        assert np.all(x[~present] == 0)
    codes = tensors[REGISTRY_KEYS.BATCH].numpy()[:, 0]
    cats = list(np.unique(trimodal.obs["batch"].astype(str)))
    np.testing.assert_array_equal(codes, [cats.index(b) for b in trimodal.obs["batch"]])
