"""Meshes (8,1), (4,2), (2,4) over 8 simulated CPU devices agree with one device; so does a prompt
table trained on mixed batches over (4,2), and decoding a batch that mixes the table's prompts
there gives each prompt's rows alone."""

import numpy as np


def test_meshes_agree_with_one_device(eight_devices):
  out = eight_devices('mesh_worker.py')
  ref = out['1x1']
  for name in ('8x1', '4x2'):
    np.testing.assert_allclose(out[name]['losses'], ref['losses'], rtol=1e-5, err_msg=name)
    # Split contractions reorder float32 sums; measured at most 1.2e-5 here (a partitioning bug
    # moves the prompt by 1e-3 or more).
    np.testing.assert_allclose(out[name]['prompt'], ref['prompt'], atol=2e-5, err_msg=name)
    assert out[name]['traces'] == 1, name
  # Model parallelism really split the frozen weights: the vocab axis over 'model'.
  assert out['4x2']['embedding_shard'] == [32128 // 2, 32]
  assert out['8x1']['embedding_shard'] == [32128, 32]
  # A table of 3 prompts, rows mixing them: (4, 2) gives one device's losses and table, and the
  # table stays whole (replicated) on every device.
  one, mesh = out['table_1x1'], out['table_4x2']
  np.testing.assert_allclose(mesh['losses'], one['losses'], rtol=1e-5)
  np.testing.assert_allclose(mesh['table'], one['table'], atol=2e-5)
  assert mesh['table_shard'] == one['table_shard'] == [3, 5, 32]
  assert mesh['traces'] == one['traces'] == 1
  # Serving on the mesh: a batch mixing the prompts gives each prompt's rows alone.
  for placement in ('prefix', 'suffix'):
    for out_mesh in (one, mesh):
      got = out_mesh['mixed_' + placement]
      assert got['logit_gap'] <= 1e-5 and got['greedy_same'], (placement, got)
