"""Checkpoints, convert, export and inspect on gs:// URLs (the GCS API server of the `gcs` fixture):
what a URL gives is exactly what the local path gives, and bad URLs are one-line errors with
nothing written."""

import json
import os
import uuid

import numpy as np
import pytest

from prompt_tuning import checkpoints, cli, storage
from prompt_tuning.prompts import export, inspection, files as prompt_files
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.checkpoints import CheckpointError
from prompt_tuning.testing import FIXTURE



def unique(name: str = '') -> str:
  """A prefix of its own in the session's bucket."""
  return f'gs://bkt/{uuid.uuid4().hex[:12]}' + (f'/{name}' if name else '')


def tree_bytes(root: str) -> dict[str, bytes]:
  """{relative path: bytes} of every file under a local directory or a URL's prefix."""
  out = {}
  for folder, _, names in storage.walk(root):
    for name in names:
      path = storage.join(folder, name)
      out[storage.relpath(path, root).replace(os.sep, '/')] = storage.read_bytes(path)
  return out


def tree_names(root: str) -> list[str]:
  """The relative paths of the files under a local directory or a URL's prefix (not read)."""
  return sorted(storage.relpath(storage.join(folder, name), root).replace(os.sep, '/')
                for folder, _, names in storage.walk(root) for name in names)


def one_line(error) -> str:
  message = str(error.value)
  assert '\n' not in message, message
  return message


@pytest.fixture(autouse=True)
def no_local_url_folders(gcs, tmp_path, monkeypatch):
  """With the GCS API server up, runs each test in an empty folder with its own download cache;
  fails if a URL was ever turned into a local path there (a folder named 'gs:' or 'foo:')."""
  work = tmp_path / 'cwd'
  work.mkdir()
  monkeypatch.chdir(work)
  monkeypatch.setenv('PROMPT_TUNING_CACHE', str(tmp_path / 'cache'))
  yield
  assert not [n for n in os.listdir(work) if n.endswith(':')], os.listdir(work)


@pytest.fixture(scope='module')
def local_ckpt(shared):
  return shared(*FIXTURE)


@pytest.fixture(scope='module')
def remote_ckpt(gcs, local_ckpt):
  """The T5X fixture copied into the bucket: gs://bkt/<prefix>/checkpoint_3."""
  url = unique('checkpoint_3')
  storage.copy_tree(local_ckpt, url)
  return url


@pytest.fixture(scope='module')
def fixture_params(local_ckpt):
  return checkpoints.load_params(local_ckpt)


def test_t5x_base_params_and_step_from_gs_equal_the_local_ones(local_ckpt, remote_ckpt,
                                                               assert_identical):
  local_config, local_params = checkpoints.load_base(local_ckpt)
  for url in (remote_ckpt, remote_ckpt + '/', storage.join(remote_ckpt, 'checkpoint'),
              storage.dirname(remote_ckpt)):  # the directory, its file, the model dir above it
    config, params = checkpoints.load_base(url)
    assert config == local_config
    assert_identical(params, local_params)
    assert checkpoints.read_step(url) == checkpoints.read_step(local_ckpt) == 3
    assert checkpoints.detect_format(url) == 't5x'
  embedding, source = checkpoints.load_embedding(remote_ckpt)
  assert source == f'{remote_ckpt}/checkpoint [token_embedder/embedding]'
  assert embedding.tobytes() == checkpoints.load_embedding(local_ckpt)[0].tobytes()
  value, _ = inspection.load_embedding(remote_ckpt)
  assert value.tobytes() == inspection.load_embedding(local_ckpt)[0].tobytes()


def test_hf_safetensors_round_trip_through_gs(fixture_params, tmp_path, assert_identical):
  config, params = fixture_params
  for shard_bytes in (10 * 1024**3, 200_000):  # one file; shards with an index
    local = checkpoints.save_hf(str(tmp_path / f'hf{shard_bytes}'), config, params,
                                max_shard_bytes=shard_bytes)
    url = checkpoints.save_hf(unique('hf'), config, params, max_shard_bytes=shard_bytes)
    assert tree_bytes(url) == tree_bytes(local)  # the same files, byte for byte
    assert checkpoints.detect_format(url) == 'hf' and checkpoints.read_step(url) == 0
    config2, params2 = checkpoints.load_params(url)
    local_config, local_params = checkpoints.load_params(local)
    assert config2 == local_config
    assert_identical(params2, local_params)
    assert_identical(params2, params)
    embedding, source = checkpoints.load_embedding(url)
    assert source.startswith(url + '/') and source.endswith('[shared.weight]')
    assert embedding.tobytes() == np.asarray(params['token_embedder']['embedding']).tobytes()
  assert len(tree_names(url)) > 3  # the sharded form was written: several shards and the index


def test_convert_to_and_from_gs(local_ckpt, remote_ckpt, fixture_params, tmp_path,
                                assert_identical):
  _, params = fixture_params
  out = unique()
  hf_url = checkpoints.convert(local_ckpt, storage.join(out, 'hf'), 'hf')
  assert hf_url == storage.join(out, 'hf')
  t5x_url = checkpoints.convert(hf_url, storage.join(out, 't5x'), 't5x')
  assert t5x_url == storage.join(out, 't5x', 'checkpoint_0')
  assert_identical(checkpoints.load_params(t5x_url)[1], params)
  # gs:// to gs:// keeps the step; the checkpoint file is the local conversion's, byte for byte.
  again = checkpoints.convert(remote_ckpt, storage.join(out, 'copy'), 't5x')
  local = checkpoints.convert(local_ckpt, str(tmp_path / 'copy'), 't5x')
  assert again == storage.join(out, 'copy', 'checkpoint_3') and checkpoints.read_step(again) == 3
  assert (storage.read_bytes(storage.join(again, 'checkpoint')) ==
          storage.read_bytes(os.path.join(local, 'checkpoint')))
  assert tree_names(again) == tree_names(local)
  assert_identical(checkpoints.load_params(again)[1], params)
  # gs:// to a local directory.
  back = checkpoints.convert(remote_ckpt, str(tmp_path / 'back'), 'hf')
  assert_identical(checkpoints.load_params(back)[1], params)
  # An existing checkpoint is replaced only when asked.
  with pytest.raises(CheckpointError, match='already exists') as e:
    checkpoints.save_t5x(storage.join(out, 'copy'), params, step=3)
  assert again in one_line(e)
  checkpoints.save_t5x(storage.join(out, 'copy'), params, step=3, overwrite=True)
  assert_identical(checkpoints.load_params(again)[1], params)


def run_dir(tmp_path, base):
  """A MODEL_DIR as a run leaves it: a committed orbax step (its folder), its numpy prompt and
  run_info.json naming `base` as the initial checkpoint."""
  path = str(tmp_path / 'run')
  config = checkpoints.load_params(base)[0]
  os.makedirs(os.path.join(model_dir_lib.checkpoints_dir(path), '3'))
  prompt = np.random.RandomState(3).randn(5, config.d_model).astype(np.float32)
  model_dir_lib.write_numpy_prompt(path, 3, prompt)
  info = {'prompt_length': 5, 'd_model': config.d_model, 'placement': 'prefix',
          'initial_checkpoint': base, 'model_config': config.__dict__}
  with open(os.path.join(path, model_dir_lib.RUN_INFO), 'w') as f:
    json.dump(info, f)
  return path, prompt


def test_export_to_gs_gives_the_local_files(remote_ckpt, tmp_path, assert_identical):
  path, prompt = run_dir(tmp_path, remote_ckpt)  # the base checkpoint itself is on gs://
  out = unique()
  npy = export.export(path, 'npy', storage.join(out, 'p.npy'))
  assert npy == storage.join(out, 'p.npy')
  assert storage.read_bytes(npy) == storage.read_bytes(export.export(
      path, 'npy', str(tmp_path / 'p.npy')))
  peft = export.export(path, 'peft', storage.join(out, 'peft'))
  assert peft == storage.join(out, 'peft')
  local_peft = export.export(path, 'peft', str(tmp_path / 'peft'))
  assert tree_bytes(peft) == tree_bytes(local_peft)
  assert tree_names(peft) == [prompt_files.PEFT_CONFIG, prompt_files.PEFT_WEIGHTS]
  ckpt = export.export(path, 't5x', storage.join(out, 't5x'))
  assert ckpt == storage.join(out, 't5x', 'checkpoint_3')
  local_ckpt = export.export(path, 't5x', str(tmp_path / 't5x'))
  assert tree_names(ckpt) == tree_names(local_ckpt)
  assert (storage.read_bytes(storage.join(ckpt, 'checkpoint')) ==
          storage.read_bytes(os.path.join(local_ckpt, 'checkpoint')))
  assert_identical(checkpoints.load_params(ckpt)[1], checkpoints.load_params(local_ckpt)[1])
  # The prompt reads back from each URL (what `inspect --prompt` reads).
  for source in (npy, ckpt):
    assert prompt_files.load_prompt_file(source).tobytes() == prompt.tobytes()


def test_inspect_reads_prompt_and_checkpoint_from_gs(local_ckpt, remote_ckpt, capsys):
  table = np.load(os.path.join(os.path.dirname(local_ckpt), 'embedding_32128x4.npy'))
  prompt_url = prompt_files.write_npy(unique('p.npy'), 3.0 * table[[100, 200]])
  table_url = unique('table.npy')
  storage.write_atomic(table_url, storage.read_bytes(
      os.path.join(os.path.dirname(local_ckpt), 'embedding_32128x4.npy')))
  value, source = inspection.load_embedding(table_url)
  assert source == table_url and value.tobytes() == table.astype(np.float32).tobytes()
  for checkpoint in (remote_ckpt, table_url):
    report = storage.join(unique(), 'report.json')
    rc = cli.main(['inspect', f'--prompt={prompt_url}', f'--checkpoint={checkpoint}',
                   f'--json={report}'])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f'embedding: {source if checkpoint == table_url else remote_ckpt}' in out
    positions = json.loads(storage.read_text(report))['prompts'][0]['positions']
    assert [p['nearest'][0]['id'] for p in positions] == [100, 200]


BAD_URLS = [
    ('gs://no-such-bucket-x1/ckpt', "bucket 'no-such-bucket-x1' does not exist"),
    ('foo://bkt/ckpt', 'no storage backend handles foo://'),
]


@pytest.mark.parametrize('url,why', BAD_URLS + [('gs://bkt/no/such/checkpoint',
                                                 'no such object or prefix')])
def test_bad_checkpoint_urls_are_one_line_errors(url, why):
  for fn in (checkpoints.load_params, checkpoints.read_step, checkpoints.load_embedding,
             inspection.load_embedding):
    with pytest.raises(CheckpointError) as e:
      fn(url)
    assert url in one_line(e) and why in str(e.value)
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_base(url)
  assert one_line(e).startswith('Cannot load the base checkpoint (INITIAL_CHECKPOINT_PATH): ')
  assert url in str(e.value) and why in str(e.value)


@pytest.mark.parametrize('url,why', BAD_URLS)
def test_bad_output_urls_write_nothing(local_ckpt, remote_ckpt, tmp_path, url, why):
  path, _ = run_dir(tmp_path, local_ckpt)
  before = sorted(os.listdir(tmp_path))
  for to in ('hf', 't5x'):
    with pytest.raises(CheckpointError) as e:
      checkpoints.convert(remote_ckpt, url, to)
    assert url in one_line(e) and why in str(e.value)
  for fmt in ('npy', 'peft', 't5x'):
    with pytest.raises(ValueError) as e:
      export.export(path, fmt, url)
    assert url in one_line(e) and why in str(e.value)
  with pytest.raises(ValueError) as e:
    checkpoints.save_t5x(url, checkpoints.load_params(local_ckpt)[1], step=1)
  assert url in one_line(e)
  assert sorted(os.listdir(tmp_path)) == before


def test_missing_source_writes_nothing():
  out = unique()
  with pytest.raises(CheckpointError, match='no such object or prefix') as e:
    checkpoints.convert(storage.join(out, 'missing'), storage.join(out, 'hf'), 'hf')
  assert storage.join(out, 'missing') in one_line(e)
  assert not storage.exists(out)


def test_damaged_checkpoints_on_gs_are_named(fixture_params):
  # A zarr chunk gone: found by listing through the file layer, not read as zeros.
  config, params = fixture_params
  url = checkpoints.save_t5x(unique(), params, step=3)
  array = storage.join(url, 'target.token_embedder.embedding')
  chunk = sorted(n for n in storage.listdir(array) if not n.startswith('.'))[0]
  storage.remove(storage.join(array, chunk))
  with pytest.raises(CheckpointError, match='zarr chunk') as e:
    checkpoints.load_params(url)
  assert array in one_line(e) and chunk in str(e.value)
  # A shard listed in the index but absent, and a truncated safetensors file.
  hf = checkpoints.save_hf(unique('hf'), config, params, max_shard_bytes=200_000)
  index = json.loads(storage.read_text(storage.join(hf, 'model.safetensors.index.json')))
  shard = storage.join(hf, sorted(set(index['weight_map'].values()))[0])
  data = storage.read_bytes(shard)
  storage.write_atomic(shard, data[:len(data) // 2])
  with pytest.raises(CheckpointError, match='corrupt or truncated') as e:
    checkpoints.load_params(hf)
  assert shard in one_line(e)
  storage.remove(shard)
  with pytest.raises(CheckpointError, match='listed in') as e:
    checkpoints.load_params(hf)
  assert shard in one_line(e)


def test_transient_errors_are_retried(gcs, remote_ckpt, fixture_params, assert_identical):
  gcs.inject(2, 503)
  assert checkpoints.read_step(remote_ckpt) == 3
  gcs.inject(2, 503, match='target.')  # tensorstore's reads of the zarr arrays
  assert_identical(checkpoints.load_params(remote_ckpt)[1], fixture_params[1])


def test_final_exports_under_a_gs_model_dir_are_the_local_files(fixture_params, tmp_path):
  config = fixture_params[0]
  prompt = np.random.RandomState(1).randn(3, config.d_model).astype(np.float32)
  table = np.stack([prompt, 2 * prompt])
  for kwargs in ({}, {'prompt_names': ['a', 'b']}):
    value = table if kwargs else prompt
    url, local = unique(), str(tmp_path / f'run{len(kwargs)}')
    written = export.export_final(url, value, config, **kwargs)
    local_written = export.export_final(local, value, config, **kwargs)
    assert written == {k: v.replace(local, url) for k, v in local_written.items()}
    assert all(v.startswith(url + '/export/') for v in written.values())
    assert tree_bytes(storage.join(url, 'export')) == tree_bytes(os.path.join(local, 'export'))
