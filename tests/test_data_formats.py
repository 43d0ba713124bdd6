"""T5's text-to-text formats: real examples from shared/data and hand-written official-schema files.

Each expected string is written out by hand from the file's record and T5's preprocessors
(t5/data/preprocessors.py: glue, stsb, record, wsc_simple/_wsc_inputs; glue_utils.py). The
tf.data preprocessors and their pure-Python versions must agree on every example of every shared
file.
"""

import json
import os

import pytest

seqio = pytest.importorskip('seqio')

from prompt_tuning import testing  # noqa: E402
from prompt_tuning.data import preprocessors, tasks  # noqa: E402


@pytest.fixture(scope='module')
def shared_data(shared):
  return shared('data')


@pytest.fixture
def local_dir():
  """Sets the local data folder for one test, then restores the previous one."""
  previous = tasks.get_settings()
  yield tasks.set_local_data_dir
  tasks.restore_settings(previous)


def text_examples(name, split, batched=True):
  """The task's text preprocessing only (no tokenization), in file order, as str dicts."""
  ds = testing.text_dataset(name, split)
  if batched:  # iterating element by element costs ~0.5 ms each; batch, then split
    ds = ds.map(lambda x: {k: v for k, v in x.items() if k != 'answers'}).batch(4096)
  else:
    ds = ds.batch(1)
  out = []
  for batch in ds.as_numpy_iterator():
    for i in range(len(batch['inputs'])):
      out.append({k: v[i].decode() if isinstance(v[i], bytes) else v[i]
                  for k, v in batch.items()})
  return out


def formatted_examples(name, split):
  return [f for raw in tasks.read_local_examples(name, split)
          for f in tasks.format_example(name, raw)]


def assert_tf_matches_python(name, split, batched=True):
  got = text_examples(name, split, batched)
  want = formatted_examples(name, split)
  assert len(got) == len(want) > 0
  for i, (g, w) in enumerate(zip(got, want)):
    assert (g['inputs'], g['targets']) == (w['inputs'], w['targets']), (name, split, i)
  return got


# ============================ real SuperGLUE / GLUE data ============================

REAL = [
    ('super_glue_rte_local', 'validation', [
        ('rte hypothesis: Christopher Reeve had an accident. premise: Dana Reeve, the widow of '
         'the actor Christopher Reeve, has died of lung cancer at age 44, according to the '
         'Christopher Reeve Foundation.', 'not_entailment'),
        ('rte hypothesis: Bacteria is winning the war against antibiotics. premise: Yet, we now '
         'are discovering that antibiotics are losing their effectiveness against illness. '
         'Disease-causing bacteria are mutating faster than we can come up with new antibiotics '
         'to fight the new variations.', 'entailment'),
    ]),
    ('super_glue_boolq_local', 'validation', [
        ("boolq passage: Phantom pain -- Phantom pain sensations are described as perceptions "
         "that an individual experiences relating to a limb or an organ that is not physically "
         "part of the body. Limb loss is a result of either removal by amputation or congenital "
         "limb deficiency. However, phantom limb sensations can also occur following nerve "
         "avulsion or spinal cord injury. question: is pain experienced in a missing body part "
         "or paralyzed area", 'True'),
    ]),
    ('super_glue_cb_local', 'validation', [
        ("cb hypothesis: Valence was helping premise: Valence the void-brain, Valence the "
         "virtuous valet. Why couldn't the figger choose his own portion of titanic anatomy to "
         "shaft? Did he think he was helping?", 'contradiction'),
        ("cb hypothesis: there is a shipment premise: ``Who knows? The point is, do we go with "
         "it or not?'' Do we assume there is a shipment?", 'neutral'),
    ]),
    ('super_glue_cb_local', 'train', [
        ('cb hypothesis: the language was peeled down premise: It was a complex language. Not '
         'written down but handed down. One might say it was peeled down.', 'entailment'),
    ]),
    ('super_glue_copa_local', 'validation', [
        ('copa choice1: The toilet filled with water. choice2: Water flowed from the spout. '
         'premise: The man turned on the faucet. question: effect', 'choice2'),
        ('copa choice1: She poured milk in the bowl. choice2: She lost her appetite. premise: '
         'The girl found a bug in her cereal. question: effect', 'choice2'),
        ('copa choice1: She received her pension. choice2: She paid off her mortgage. premise: '
         'The woman retired. question: effect', 'choice1'),
    ]),
    ('super_glue_wic_local', 'validation', [
        ('wic sentence1: An emerging professional class. sentence2: Apologizing for losing your '
         'temper, even though you were badly provoked, showed real class. word: class', 'False'),
        ('wic sentence1: Businessmen of every stripe joined in opposition to the proposal. '
         'sentence2: They earned their stripes in Kuwait. word: stripe', 'False'),
    ]),
    ('super_glue_wsc_local', 'validation', [
        ('wsc: Bernard , who had not told the government official that he was less than 21 when '
         'he filed for a homestead claim, did not consider that he had done anything dishonest. '
         'Still, anyone who knew that he was 19 years old could take his claim away from *him* .',
         'anyone'),
        ("wsc: Mr. Moncrieff visited Chester 's luxurious New York apartment, thinking that it "
         "belonged to his son Edward . The result was that Mr. Moncrieff has decided to cancel "
         "Edward 's allowance on the ground that he no longer requires *his* financial support.",
         'Mr. Moncrieff'),
        ('wsc: I tried to paint a picture of an orchard, with lemons in the lemon trees , but '
         '*they* came out looking more like light bulbs.', 'lemon trees'),
    ]),
    # Train keeps only true referents; TFDS's wsc.fixed lowercases 'The cup' to match the text.
    ('super_glue_wsc_local', 'train', [
        ('wsc: The pony behaved well, sir, and showed no vice; but at last he just threw up his '
         'heels and tipped the young gentleman into the thorn hedge. *He* wanted me to help him '
         'out, but I hope you will excuse me, sir, I did not feel inclined to do so.',
         'young gentleman'),
        ('wsc: I poured water from the bottle into the cup until *it* was full.', 'the cup'),
    ]),
    ('glue_sst2_local', 'validation', [
        ("sst2 sentence: it 's a charming and often affecting journey . ", 'positive'),
        ('sst2 sentence: unflinchingly bleak and desperate ', 'negative'),
    ]),
    ('glue_mrpc_local', 'validation', [
        ("mrpc sentence1: He said the foodservice pie business doesn't fit the company's "
         "long-term growth strategy. sentence2: \"The foodservice pie business does not fit our "
         "long-term growth strategy.", 'equivalent'),
        ('mrpc sentence1: Magnarelli said Racicot hated the Iraqi regime and looked forward to '
         'using his long years of training in the war. sentence2: His wife said he was "100 '
         'percent behind George Bush" and looked forward to using his years of training in the '
         'war.', 'not_equivalent'),
    ]),
]

MULTIRC_PARAGRAPH = (
    'What causes a change in motion? The application of a force. Any time an object changes '
    'motion, a force has been applied. In what ways can this happen? Force can cause an object at '
    'rest to start moving. Forces can cause objects to speed up or slow down. Forces can cause a '
    'moving object to stop. Forces can also cause a change in direction. In short, forces cause '
    'changes in motion. The moving object may change its speed, its direction, or both. We know '
    'that changes in motion require a force. We know that the size of the force determines the '
    'change in motion. How much an objects motion changes when a force is applied depends on two '
    'things. It depends on the strength of the force. It also depends on the objects mass. Think '
    'about some simple tasks you may regularly do. You may pick up a baseball. This requires only '
    'a very small force. ')


@pytest.mark.parametrize('name,split,expected', REAL, ids=[f'{n}-{s}' for n, s, _ in REAL])
def test_real_examples(shared_data, local_dir, name, split, expected):
  local_dir(shared_data)
  got = assert_tf_matches_python(name, split)
  if name == 'super_glue_boolq_local':
    got = got[2:]  # the first two passages are long; the third is short enough to write out
  assert [(g['inputs'], g['targets']) for g in got[:len(expected)]] == expected


def test_real_mrpc_tokenized_file_as_tfds_reads_it(shared_data, local_dir):
  local_dir(shared_data)
  tasks.set_local_file('glue_mrpc_local', 'validation', 'glue/MRPC/dev_tokenized_lmbff.tsv')
  try:
    got = assert_tf_matches_python('taskless_glue_mrpc_local', 'validation')
  finally:
    tasks.set_local_file('glue_mrpc_local', 'validation', 'glue/MRPC/dev.tsv')
  assert len(got) == 408
  assert (got[0]['inputs'], got[0]['targets']) == (
      "sentence1: He said the foodservice pie business doesn 't fit the company 's long-term "
      'growth strategy . sentence2: " The foodservice pie business does not fit our long-term '
      'growth strategy .', 'equivalent')
  assert text_examples('glue_mrpc_local', 'validation')[0]['inputs'].startswith(
      "mrpc sentence1: He said the foodservice pie business doesn't fit")


def test_real_multirc_one_example_per_answer_with_ids(shared_data, local_dir):
  local_dir(shared_data)
  got = assert_tf_matches_python('super_glue_multirc_local', 'validation')
  assert len(got) == 4848  # every answer option of the 953 questions
  question = ('multirc question: Would the mass of a baseball affect how much force you have to '
              'use to pick it up? answer: ')
  assert [(g['inputs'], g['targets']) for g in got[:3]] == [
      (question + 'No paragraph: ' + MULTIRC_PARAGRAPH, 'False'),
      (question + 'Yes paragraph: ' + MULTIRC_PARAGRAPH, 'True'),
      (question + 'Less the mass, less the force applied paragraph: ' + MULTIRC_PARAGRAPH,
       'True')]
  assert [(g['idx/paragraph'], g['idx/question'], g['idx/answer']) for g in got[:3]] == [
      (0, 0, 0), (0, 0, 1), (0, 0, 2)]


def test_real_wsc_train_keeps_true_referents_only(shared_data, local_dir):
  local_dir(shared_data)
  train = assert_tf_matches_python('super_glue_wsc_local', 'train')
  # T5 weights super_glue_wsc_v102_simple_train by its 259 examples.
  assert len(train) == 259 and all(g['label'] == 1 for g in train)
  validation = assert_tf_matches_python('super_glue_wsc_local', 'validation')
  assert len(validation) == 104 and {g['label'] for g in validation} == {0, 1}
  # T5's hand-written special case (span2_index points at 'use', not 'it').
  special = [g['inputs'] for g in validation if 'magic pebble' in g['inputs']]
  assert special == [
      'wsc: When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the '
      'magic pebble in an iron safe . Some day they might want to use *it* , but really for '
      'now, what more could they wish for?']


def test_real_rte_and_copa_train(shared_data, local_dir):
  local_dir(shared_data)
  assert len(assert_tf_matches_python('super_glue_rte_local', 'train')) == 2490
  copa = assert_tf_matches_python('super_glue_copa_local', 'train')
  assert (copa[0]['inputs'], copa[0]['targets']) == (
      'copa choice1: The sun was rising. choice2: The grass was cut. premise: My body cast a '
      'shadow over the grass. question: cause', 'choice1')


def test_real_taskless(shared_data, local_dir):
  local_dir(shared_data)
  rte = text_examples('taskless_super_glue_rte_local', 'validation')
  assert rte[0]['inputs'] == (
      'hypothesis: Christopher Reeve had an accident. premise: Dana Reeve, the widow of the '
      'actor Christopher Reeve, has died of lung cancer at age 44, according to the Christopher '
      'Reeve Foundation.')
  assert rte[0]['targets'] == 'not_entailment'
  wsc = text_examples('taskless_super_glue_wsc_local', 'validation')
  assert wsc[2]['inputs'] == ('I tried to paint a picture of an orchard, with lemons in the '
                              'lemon trees , but *they* came out looking more like light bulbs.')
  sst2 = text_examples('taskless_glue_sst2_local', 'validation')
  assert sst2[1]['inputs'] == 'sentence: unflinchingly bleak and desperate '
  assert formatted_examples('taskless_glue_sst2_local', 'validation')[1]['inputs'] == (
      'sentence: unflinchingly bleak and desperate ')


# ====================== hand-written files in the official schemas ======================

def _write(root, relative, text):
  path = os.path.join(root, relative)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


RECORD_TEXT = ('Rover the dog chased a cat in Paris.\n@highlight\nRover is fast\n@highlight\n'
               'The cat escaped')


def _span(text, word, nth=0):
  start = -1
  for _ in range(nth + 1):
    start = text.index(word, start + 1)
  return {'start': start, 'end': start + len(word) - 1}


@pytest.fixture(scope='module')
def handwritten(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('official'))
  record = {
      'source': 'Daily mail', 'idx': 5,
      'passage': {'text': RECORD_TEXT, 'entities': [
          _span(RECORD_TEXT, 'Rover'), _span(RECORD_TEXT, 'Paris'),
          _span(RECORD_TEXT, 'Rover', 1)]},
      'qas': [{'idx': 9, 'query': '@placeholder is a fast dog.',
               'answers': [{'text': 'Rover the dog', **_span(RECORD_TEXT, 'Rover the dog')},
                           {'text': 'Rover', **_span(RECORD_TEXT, 'Rover')},
                           {'text': 'Rover', **_span(RECORD_TEXT, 'Rover', 1)}]},
              {'idx': 10, 'query': 'The cat ran through @placeholder.',
               'answers': [{'text': 'Paris', **_span(RECORD_TEXT, 'Paris')}]}]}
  _write(root, 'superglue/ReCoRD/val.jsonl', json.dumps(record) + '\n')
  multirc = {'idx': 3, 'version': 1.1, 'passage': {
      'text': '<b>Sent 1: </b>The cat sat.<br><b>Sent 2: </b>It was happy.<br>',
      'questions': [{'idx': 7, 'question': 'Was the cat happy?', 'answers': [
          {'idx': 20, 'text': 'Yes', 'label': 1}, {'idx': 21, 'text': 'No', 'label': 0}]}]}}
  _write(root, 'superglue/MultiRC/val.jsonl', json.dumps(multirc) + '\n')
  _write(root, 'glue/QQP/dev.tsv',
         'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n'
         '201\t1\t2\tHow do I learn Python?\tWhat is the best way to learn Python?\t1\n'
         '202\t3\t4\tWhy is the sky blue?\tHow tall is Everest?\t0\n'
         '203\t5\t6\tA corrupted row with one question\n')
  mnli_header = ('index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t'
                 'sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\t'
                 'sentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n')
  _write(root, 'glue/MNLI/dev_matched.tsv', mnli_header +
         '0\t63735\t63735n\tslate\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThe new rights are nice '
         'enough\tEveryone really likes the newest benefits\tneutral\tentailment\tneutral\t'
         'neutral\tneutral\tneutral\n')
  _write(root, 'glue/MNLI/dev_mismatched.tsv', mnli_header +
         '0\t75290\t75290c\tletters\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tYour contribution '
         'helped make it possible.\tYour contributions were of no help.\tcontradiction\t'
         'contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n')
  _write(root, 'glue/QNLI/dev.tsv',
         'index\tquestion\tsentence\tlabel\n'
         '0\tWhat came into force after the new constitution was herald?\tAs of that day, the '
         'new constitution heralding the Second Republic came into force.\tentailment\n')
  _write(root, 'glue/RTE/dev.tsv',
         'index\tsentence1\tsentence2\tlabel\n'
         '0\tDana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age '
         '44, according to the Christopher Reeve Foundation.\tChristopher Reeve had an accident.'
         '\tnot_entailment\n')
  _write(root, 'glue/CoLA/dev.tsv',
         'gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n'
         'gj04\t0\t*\tThey drank the pub.\n')
  _write(root, 'glue/STS-B/dev.tsv',
         'index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\t'
         'score\n'
         '0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.'
         '\tA man wearing a hard hat is dancing.\t5.000\n'
         '1\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA woman is slicing.\tA man is '
         'cutting.\t1.700\n'
         '2\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA dog runs.\tA cat sleeps.\t'
         '0.500\n'
         '3\tmain-captions\tMSRvid\t2012test\t0003\tnone\tnone\tA man plays.\tA man sings.\t'
         '4.300\n')
  return root


HANDWRITTEN = [
    ('glue_qqp_local', [
        ('qqp question1: How do I learn Python? question2: What is the best way to learn Python?',
         'duplicate'),
        ('qqp question1: Why is the sky blue? question2: How tall is Everest?', 'not_duplicate'),
    ]),  # the corrupted third row is dropped, as TFDS drops it
    ('glue_mnli_local', [
        ('mnli hypothesis: Everyone really likes the newest benefits premise: The new rights are '
         'nice enough', 'neutral')]),
    ('glue_mnli_mismatched_local', [
        ('mnli hypothesis: Your contributions were of no help. premise: Your contribution helped '
         'make it possible.', 'contradiction')]),
    ('glue_qnli_local', [
        ('qnli question: What came into force after the new constitution was herald? sentence: '
         'As of that day, the new constitution heralding the Second Republic came into force.',
         'entailment')]),
    ('glue_rte_local', [
        ('rte sentence1: Dana Reeve, the widow of the actor Christopher Reeve, has died of lung '
         'cancer at age 44, according to the Christopher Reeve Foundation. sentence2: '
         'Christopher Reeve had an accident.', 'not_entailment')]),
    ('glue_cola_local', [
        ('cola sentence: The sailors rode the breeze clear of the rocks.', 'acceptable'),
        ('cola sentence: They drank the pub.', 'unacceptable')]),
    # Nearest 0.2 in float32 with round-half-to-even: 1.7 -> 8.5 -> 8 -> 1.6; 0.5 -> 0.4.
    ('glue_stsb_local', [
        ('stsb sentence1: A man with a hard hat is dancing. sentence2: A man wearing a hard hat '
         'is dancing.', '5.0'),
        ('stsb sentence1: A woman is slicing. sentence2: A man is cutting.', '1.6'),
        ('stsb sentence1: A dog runs. sentence2: A cat sleeps.', '0.4'),
        ('stsb sentence1: A man plays. sentence2: A man sings.', '4.4')]),
    ('super_glue_multirc_local', [
        ('multirc question: Was the cat happy? answer: Yes paragraph: Sent 1: The cat sat. '
         'Sent 2: It was happy. ', 'True'),
        ('multirc question: Was the cat happy? answer: No paragraph: Sent 1: The cat sat. '
         'Sent 2: It was happy. ', 'False')]),
]


@pytest.mark.parametrize('name,expected', HANDWRITTEN, ids=[n for n, _ in HANDWRITTEN])
def test_handwritten_examples(handwritten, local_dir, name, expected):
  local_dir(handwritten)
  got = assert_tf_matches_python(name, 'validation')
  assert [(g['inputs'], g['targets']) for g in got] == expected


def test_handwritten_record_one_example_per_answer(handwritten, local_dir):
  local_dir(handwritten)
  got = assert_tf_matches_python('super_glue_record_local', 'validation', batched=False)
  passage = 'Rover the dog chased a cat in Paris. Rover is fast. The cat escaped'
  first = ('record query: @placeholder is a fast dog. entities: Paris, Rover passage: '
           + passage)
  second = ('record query: The cat ran through @placeholder. entities: Paris, Rover passage: '
            + passage)
  # Answers are de-duplicated and sorted (TFDS); each becomes a training example (T5).
  assert [(g['inputs'], g['targets']) for g in got] == [
      (first, 'Rover'), (first, 'Rover the dog'), (second, 'Paris')]
  assert [(g['idx/passage'], g['idx/query']) for g in got] == [(5, 9), (5, 9), (5, 10)]
  assert [[a.decode() for a in g['answers']] for g in got] == [
      ['Rover', 'Rover the dog'], ['Rover', 'Rover the dog'], ['Paris']]


def test_handwritten_glue_mnli_splits(handwritten, local_dir):
  local_dir(handwritten)
  matched = text_examples('glue_mnli_local', 'validation_matched')
  mismatched = text_examples('glue_mnli_local', 'validation_mismatched')
  assert matched[0]['targets'] == 'neutral' and mismatched[0]['targets'] == 'contradiction'
  assert text_examples('glue_mnli_matched_local', 'validation')[0]['inputs'] == (
      matched[0]['inputs'])
  assert text_examples('taskless_glue_qqp_local', 'validation')[0]['inputs'] == (
      'question1: How do I learn Python? question2: What is the best way to learn Python?')


def test_python_formatters_on_edge_cases():
  # T5's hand-written WSC special case (the pronoun is glued to punctuation).
  text = ('The boy continued to whip the pony , and eventually the pony threw him over. John '
          'laughed out quite loud. "Good for him," he said. ')
  ex = {'text': text, 'span1_text': 'John', 'span1_index': 15, 'span2_text': 'him',
        'span2_index': 22, 'label': 1, 'idx': 0}
  assert preprocessors.wsc_simple_text(ex)['inputs'] == (
      'wsc: The boy continued to whip the pony , and eventually the pony threw him over. John '
      'laughed out quite loud. "Good for *him* ," he said.')
  with pytest.raises(ValueError, match='not the span2_text'):
    preprocessors.wsc_simple_text({**ex, 'text': 'Bob saw Tom and he left .',
                                   'span2_index': 2})
  # Unlabeled examples get T5's '<unk>' target; ReCoRD without answers gives one '<unk>' row.
  assert preprocessors.glue_text({'sentence': 'x', 'label': -1, 'idx': 0}, 'sst2',
                                 ('negative', 'positive'))['targets'] == '<unk>'
  rows = preprocessors.record_text({'passage': 'P', 'query': 'Q', 'entities': ['E'],
                                    'answers': [], 'idx': {'passage': 0, 'query': 1}})
  assert [(r['inputs'], r['targets']) for r in rows] == [
      ('record query: Q entities: E passage: P', '<unk>')]
  assert preprocessors.remove_first_token_text('rte hypothesis: a b') == 'hypothesis: a b'
  assert preprocessors.stsb_label_string(3.8) == '3.8'


# ================================ quickstart ================================

def test_quickstart_examples_are_consistent_and_deterministic():
  for op, fn in (('first', lambda d: d[0]), ('last', lambda d: d[-1]), ('max', max),
                 ('min', min)):
    train = tasks.quickstart_examples(op, 'train')
    validation = tasks.quickstart_examples(op, 'validation')
    assert len(train) == 20_000 and len(validation) == 200
    assert all(5 <= len(d) <= 8 and d.isdigit() and answer == fn(d) for d, answer in train)
    assert train == tasks.quickstart_examples(op, 'train')
    assert validation != train[:200]
  # A prefix of the split does not depend on how many examples are asked for.
  assert tasks.quickstart_examples('max', 'validation', 2) == [('565343', '6'), ('45258', '8')]


def test_quickstart_tasks_format():
  assert text_examples('quickstart_max', 'validation')[:2] == [
      {'inputs': 'max: 565343', 'targets': '6'}, {'inputs': 'max: 45258', 'targets': '8'}]
  assert text_examples('quickstart_max_taskless', 'validation')[0] == {
      'inputs': '565343', 'targets': '6'}
  first = text_examples('quickstart_first', 'validation')
  assert all(e['inputs'].startswith('first: ') and e['targets'] == e['inputs'][7]
             for e in first)
  info = tasks.TASK_INFO['quickstart_mixture']
  assert info.labels == tuple('0123456789') and info.main_metric == 'accuracy'
  mixture = tasks.get_task_or_mixture('quickstart_mixture')
  assert sorted(t.name for t in mixture.tasks) == [
      'quickstart_first', 'quickstart_last', 'quickstart_max', 'quickstart_min']


def test_quickstart_tasks_for_causal_lms_mark_where_the_answer_follows():
  assert text_examples('quickstart_lm_max', 'validation')[0] == {
      'inputs': 'max: 565343 =', 'targets': '6'}
  assert text_examples('quickstart_lm_first_taskless', 'validation')[0]['inputs'].endswith(' =')
  mixture = tasks.get_task_or_mixture('quickstart_lm_mixture')
  assert sorted(t.name for t in mixture.tasks) == [
      'quickstart_lm_first', 'quickstart_lm_last', 'quickstart_lm_max', 'quickstart_lm_min']
  assert tasks.TASK_INFO['quickstart_lm_mixture'].labels == tuple('0123456789')
  # The answer of any variant, from the digits of any input text.
  assert tasks.quickstart_answer('quickstart_lm_max_taskless', '565343 =') == '6'
  assert tasks.quickstart_answer('quickstart_first', 'first: 45258') == '4'
  with pytest.raises(ValueError, match=r"'quickstart_lm_mode' is not a quickstart task"):
    tasks.quickstart_answer('quickstart_lm_mode', '123')
