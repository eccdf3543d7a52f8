#!/usr/bin/env node
// Independent Node.js check of the ATP v1 test vectors (tests/vectors/frames.json).
//
//   node clients/node/check_vectors.mjs [path/to/frames.json]
//
// Implements the whole receive path from the protocol description, not from the Python code:
// header parse, key lookup with expiry, HMAC-SHA256 over the exact bytes (node:crypto), the
// reserved/flags/type/stream checks, a strict CBOR decode with every limit, the per-type payload
// shapes, and the session checks (direction flag, opening HELLO, nonce cache with clock skew,
// session nonce binding, 64-wide sliding sequence window). For every good frame it also
// re-encodes the payload from its JSON form with deterministic CBOR (RFC 8949 core deterministic
// encoding: shortest integer and length forms, keys sorted by their encoded bytes, floats in the
// shortest IEEE 754 width that is exact) and compares it byte for byte with payload_hex.
//
// CBOR: the npm package cbor2 builds the values and encodes; well-formedness and ATP's rules
// (no tags, no indefinite lengths, text/byte-string keys only, duplicate keys compared by value,
// nesting depth, trailing bytes) are enforced by strictScan() below over the raw bytes, because
// cbor2's own options do not match ATP exactly (its maxDepth counts differently, it resolves
// some tags silently, and its rejectDuplicateKeys compares encoded bytes, so "a" written as
// 0x61 0x61 and as 0x78 0x01 0x61 slip through).
//
// Prints `ok <name>` or `FAIL <name>: why` per case, then `N passed, M failed`; exits 1 on any
// failure, 2 on unusable input.

import {createHmac, timingSafeEqual} from 'node:crypto';
import {readFileSync} from 'node:fs';
import path from 'node:path';
import {fileURLToPath} from 'node:url';
import {Simple, decode as cborDecode, encode as cborEncode, encodedNumber} from 'cbor2';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DEFAULT_VECTORS = path.resolve(HERE, '../../tests/vectors/frames.json');

// ---- protocol constants ----------------------------------------------------------------------

const VERSION = 1;
const HEADER_SIZE = 40;
const TAG_SIZE = 32;
const FLAG_CONGESTION = 0x01;
const FLAG_RESPONDER = 0x80;
const KNOWN_FLAGS = FLAG_CONGESTION | FLAG_RESPONDER;

const TYPES = new Map([
  [0x01, 'HELLO'], [0x02, 'REQUEST'], [0x03, 'CHUNK'], [0x04, 'END'], [0x05, 'ERROR'],
  [0x06, 'WINDOW_UPDATE'], [0x07, 'PING'], [0x08, 'PONG'], [0x09, 'CLOSE'], [0x0a, 'CANCEL'],
]);
const CONNECTION_TYPES = new Set(['HELLO', 'WINDOW_UPDATE', 'PING', 'PONG', 'CLOSE']);

const CODES = {
  MALFORMED_FRAME: 100, UNSUPPORTED_VERSION: 101, UNKNOWN_FRAME_TYPE: 102, FRAME_TOO_LARGE: 103,
  MALFORMED_PAYLOAD: 104, PROTOCOL_VIOLATION: 105, INVALID_STREAM: 106,
  BAD_SIGNATURE: 200, UNKNOWN_KEY: 201, REPLAYED_NONCE: 202, STALE_TIMESTAMP: 203,
  SEQUENCE_REPLAY: 204,
};
const CODE_NAMES = new Map(Object.entries(CODES).map(([name, code]) => [code, name]));

class AtpError extends Error {
  constructor(name, message) {
    super(message);
    this.code = CODES[name];
    this.codeName = name;
  }
}
const fail = (name, message) => {
  throw new AtpError(name, message);
};

// Payload shapes per frame type: key -> [kind, required]. Unknown keys are ignored.
const SCHEMAS = {
  HELLO: {agent: ['str', false], win: ['uint3', false], hb_ms: ['uint', false],
    idle_ms: ['uint', false], max_payload: ['uint', false]},
  REQUEST: {messages: ['messages', true], model: ['str', false], tier: ['tier', false],
    max_tokens: ['uint', false], max_cost: ['uint', false], slo_ms: ['uint', false],
    tenant: ['str', false], caps: ['strs', false], temperature: ['num', false],
    stream: ['bool', false], meta: ['smap', false], rid: ['str', false]},
  CHUNK: {i: ['uint', true], text: ['str', true], tok: ['uint', false]},
  END: {in: ['uint', true], out: ['uint', true], cost: ['uint', true], model: ['str', false],
    provider: ['str', false], finish: ['str', false], overhead_us: ['uint', false]},
  ERROR: {code: ['uint', true], msg: ['str', false], retry: ['bool', false],
    after_ms: ['uint', false]},
  WINDOW_UPDATE: {req: ['uint', false], tok: ['uint', false], usd: ['uint', false]},
  PING: {d: ['uint', true]},
  PONG: {d: ['uint', true]},
  CLOSE: {code: ['uint', true], msg: ['str', false]},
  CANCEL: {code: ['uint', false]},
};

// Decoded CBOR integers are always bigint (cbor2's preferBigInt), floats are always number, so
// the float 1.0 is never mistaken for the integer 1.
const TWO_53 = 2n ** 53n;
const isUint = (v) => typeof v === 'bigint' && v >= 0n; // major type 0 caps it at 2^64-1
const isStr = (v) => typeof v === 'string';
const KINDS = {
  uint: (v) => isUint(v),
  str: isStr,
  bool: (v) => typeof v === 'boolean',
  num: (v) => (typeof v === 'number' && !Number.isNaN(v)) ||
    (typeof v === 'bigint' && v >= -TWO_53 && v <= TWO_53),
  tier: (v) => v === 'fast' || v === 'balanced' || v === 'high',
  strs: (v, lim) => Array.isArray(v) && v.length <= lim.max_array_len && v.every(isStr),
  messages: (v, lim) => Array.isArray(v) && v.length > 0 && v.length <= lim.max_array_len &&
    v.every((m) => Array.isArray(m) && m.length === 2 && isStr(m[0]) && isStr(m[1])),
  smap: (v, lim) => v instanceof Map && v.size <= lim.max_map_size &&
    [...v].every(([k, x]) => isStr(k) && isStr(x)),
  uint3: (v) => Array.isArray(v) && v.length === 3 && v.every(isUint),
};

function checkShape(typeName, payload, limits) {
  for (const [key, [kind, required]] of Object.entries(SCHEMAS[typeName])) {
    if (!payload.has(key)) {
      if (required) fail('MALFORMED_PAYLOAD', `${typeName} payload lacks required key ${key}`);
      continue;
    }
    if (!KINDS[kind](payload.get(key), limits)) {
      fail('MALFORMED_PAYLOAD', `${typeName} payload key ${key} must be ${kind}`);
    }
  }
}

// ---- strict CBOR -----------------------------------------------------------------------------

const UTF8 = new TextDecoder('utf-8', {fatal: true, ignoreBOM: true});
const hex = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  .toString('hex');

// Walk one top-level CBOR data item over the raw bytes and enforce ATP's rules. No data item
// may be enclosed by more than max_depth containers (the top-level map is the first).
function strictScan(b, limits) {
  let pos = 0;
  const bad = (message) => fail('MALFORMED_PAYLOAD', message);
  const need = (n) => {
    if (BigInt(b.length - pos) < n) bad('CBOR ends early');
  };
  const head = () => {
    need(1n);
    const ib = b[pos++];
    const mt = ib >> 5;
    const ai = ib & 0x1f;
    if (ai < 24) return {mt, ai, arg: BigInt(ai)};
    if (ai <= 27) {
      const n = 1 << (ai - 24);
      need(BigInt(n));
      let arg = 0n;
      for (let i = 0; i < n; i++) arg = (arg << 8n) | BigInt(b[pos++]);
      return {mt, ai, arg};
    }
    if (ai <= 30) bad(`reserved additional information ${ai}`);
    if (mt === 7) bad('break stop code outside an indefinite-length item');
    if (mt >= 2 && mt <= 5) bad('indefinite-length items are not allowed');
    return bad(`additional information 31 is not valid for major type ${mt}`);
  };
  const item = (level) => {
    if (level > limits.max_depth) bad(`nesting deeper than ${limits.max_depth} containers`);
    const {mt, ai, arg} = head();
    // a container at `level` is the (level + 1)-th: an empty one counts too (nothing inside it
    // would ever reach the check above)
    if ((mt === 4 || mt === 5) && level >= limits.max_depth) {
      bad(`nesting deeper than ${limits.max_depth} containers`);
    }
    switch (mt) {
      case 0: case 1:
        return {mt};
      case 2: case 3: {
        need(arg);
        const bytes = b.subarray(pos, pos + Number(arg));
        pos += Number(arg);
        if (mt === 2) return {mt, key: `b:${hex(bytes)}`};
        let text;
        try {
          text = UTF8.decode(bytes);
        } catch {
          bad('text string is not valid UTF-8');
        }
        return {mt, key: `t:${text}`};
      }
      case 4:
        need(arg); // every item takes at least one byte
        for (let i = 0n; i < arg; i++) item(level + 1);
        return {mt, size: arg};
      case 5: {
        need(arg * 2n);
        const seen = new Set();
        for (let i = 0n; i < arg; i++) {
          const key = item(level + 1);
          if (key.mt !== 2 && key.mt !== 3) bad('map keys must be text or byte strings');
          if (seen.has(key.key)) bad(`duplicate map key ${key.key}`);
          seen.add(key.key);
          item(level + 1);
        }
        return {mt, size: arg};
      }
      case 6:
        return bad('CBOR tags are not allowed');
      default: // 7: false/true/null/undefined/simple values and floats
        if (ai === 24 && arg < 32n) bad('simple value below 32 in the two-byte form');
        return {mt};
    }
  };
  const top = item(0);
  if (pos !== b.length) bad(`${b.length - pos} trailing bytes after the payload`);
  if (top.mt !== 5) bad('payload must be a CBOR map');
  if (top.size > BigInt(limits.max_map_size)) {
    bad(`payload map has ${top.size} entries, limit ${limits.max_map_size}`);
  }
}

const DECODE_OPTIONS = {
  preferMap: true, // maps always decode to Map: key order kept, byte-string keys allowed
  preferBigInt: true, // integers always bigint, so int and float stay distinct
  rejectDuplicateKeys: true,
  rejectStreaming: true,
};

function decodePayload(body, limits) {
  strictScan(body, limits);
  try {
    return cborDecode(body, DECODE_OPTIONS);
  } catch (e) {
    return fail('MALFORMED_PAYLOAD', `CBOR: ${e.message}`);
  }
}

// ---- frames ----------------------------------------------------------------------------------

class KeyRing {
  constructor(keys, expired) {
    this.keys = new Map(Object.entries(keys).map(([id, h]) => [Number(id), Buffer.from(h, 'hex')]));
    this.expiry = new Map(Object.entries(expired ?? {}).map(([id, t]) => [Number(id), BigInt(t)]));
  }

  verifier(keyId, now) {
    const secret = this.keys.get(keyId);
    if (secret === undefined) fail('UNKNOWN_KEY', `unknown key id ${keyId}`);
    const expiry = this.expiry.get(keyId);
    if (expiry !== undefined && now > expiry) fail('UNKNOWN_KEY', `key id ${keyId} expired`);
    return secret;
  }
}

// One frame at the start of buf: {frame, end}, or null if the bytes are incomplete.
function openFrame(buf, ring, limits, now) {
  if (buf.length < HEADER_SIZE) return null;
  const plen = buf.readUInt32BE(0);
  const version = buf[4];
  const typeId = buf[5];
  const flags = buf[6];
  const reserved = buf[7];
  const keyId = buf.readUInt32BE(8);
  const streamId = buf.readUInt32BE(12);
  const sequence = buf.readBigUInt64BE(16);
  const timestamp = buf.readBigUInt64BE(24);
  const nonce = buf.subarray(32, 40).toString('hex');
  if (version !== VERSION) fail('UNSUPPORTED_VERSION', `version ${version}`);
  if (plen > limits.max_payload) fail('FRAME_TOO_LARGE', `payload length ${plen}`);
  const end = HEADER_SIZE + plen + TAG_SIZE;
  if (end > buf.length) return null;
  const secret = ring.verifier(keyId, now);
  const mac = createHmac('sha256', secret).update(buf.subarray(0, end - TAG_SIZE)).digest();
  if (!timingSafeEqual(mac, buf.subarray(end - TAG_SIZE, end))) {
    fail('BAD_SIGNATURE', `HMAC mismatch for key id ${keyId}`);
  }
  if (reserved !== 0) fail('MALFORMED_FRAME', `reserved byte ${reserved}`);
  if (flags & ~KNOWN_FLAGS) fail('MALFORMED_FRAME', `unknown flag bits ${flags & ~KNOWN_FLAGS}`);
  const type = TYPES.get(typeId);
  if (type === undefined) fail('UNKNOWN_FRAME_TYPE', `frame type ${typeId}`);
  if (CONNECTION_TYPES.has(type) !== (streamId === 0)) {
    fail('MALFORMED_FRAME', `${type} on stream ${streamId}`);
  }
  const body = buf.subarray(HEADER_SIZE, end - TAG_SIZE);
  const payload = decodePayload(body, limits);
  checkShape(type, payload, limits);
  return {
    frame: {type, typeId, flags, keyId, streamId, sequence, timestamp, nonce, payload, body},
    end,
  };
}

// ---- session ---------------------------------------------------------------------------------

class NonceCache {
  constructor(skewMs) {
    this.skew = BigInt(skewMs);
    this.expiry = new Map(); // nonce hex -> last instant at which it could be replayed
  }

  checkAndAdd(nonce, timestamp, now) {
    const delta = timestamp - now;
    if ((delta < 0n ? -delta : delta) > this.skew) {
      fail('STALE_TIMESTAMP', `timestamp ${delta} ms from now`);
    }
    const until = this.expiry.get(nonce);
    if (until !== undefined && until >= now) fail('REPLAYED_NONCE', `nonce ${nonce} reused`);
    for (const [n, t] of this.expiry) if (t < now) this.expiry.delete(n);
    this.expiry.set(nonce, timestamp + this.skew);
  }
}

class SequenceWindow {
  constructor(size) {
    this.size = BigInt(size);
    this.highest = -1n;
    this.bitmap = 0n; // bit i set: sequence highest - i seen
    this.mask = (1n << this.size) - 1n;
  }

  checkAndAdd(seq) {
    if (seq > this.highest) {
      const shift = seq - this.highest;
      this.bitmap = shift < this.size ? ((this.bitmap << shift) | 1n) & this.mask : 1n;
      this.highest = seq;
      return;
    }
    const back = this.highest - seq;
    if (back >= this.size) fail('SEQUENCE_REPLAY', `sequence ${seq} older than the window`);
    const bit = 1n << back;
    if (this.bitmap & bit) fail('SEQUENCE_REPLAY', `sequence ${seq} already received`);
    this.bitmap |= bit;
  }
}

class SessionGuard {
  constructor(isResponder, nonceCache, sessionNonce, window) {
    this.isResponder = isResponder;
    this.nonceCache = nonceCache;
    this.sessionNonce = sessionNonce;
    this.window = new SequenceWindow(window);
  }

  check(frame, now) {
    if (((frame.flags & FLAG_RESPONDER) !== 0) === this.isResponder) {
      fail('PROTOCOL_VIOLATION', 'frame carries our own direction flag');
    }
    if (this.window.highest < 0n) {
      if (frame.sequence !== 0n) fail('PROTOCOL_VIOLATION', 'opening frame sequence is not 0');
      if (this.isResponder) {
        if (frame.type !== 'HELLO') fail('PROTOCOL_VIOLATION', `session opens with ${frame.type}`);
        if (frame.nonce === '0000000000000000') fail('PROTOCOL_VIOLATION', 'all-zero nonce');
        this.sessionNonce = frame.nonce;
        this.nonceCache.checkAndAdd(frame.nonce, frame.timestamp, now);
      } else {
        if (frame.type !== 'HELLO' && frame.type !== 'CLOSE') {
          fail('PROTOCOL_VIOLATION', `responder answers with ${frame.type}`);
        }
        if (frame.nonce !== this.sessionNonce) fail('REPLAYED_NONCE', 'nonce not echoed');
      }
    } else if (frame.nonce !== this.sessionNonce) {
      fail('REPLAYED_NONCE', 'frame nonce does not match the session');
    }
    this.window.checkAndAdd(frame.sequence);
  }
}

// ---- JSON that keeps integers exact and floats apart from integers ----------------------------

class JFloat {
  constructor(v) {
    this.v = v;
  }
}

// Objects -> Map (key order kept), integers -> bigint, numbers with a fraction or an exponent ->
// JFloat. JSON.parse would turn 1.0 into 1 and lose 64-bit integers.
function parseJson(text) {
  let i = 0;
  const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
  const error = (what) => {
    throw new SyntaxError(`JSON: ${what} at offset ${i}`);
  };
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const expect = (ch) => {
    ws();
    if (text[i] !== ch) error(`expected ${ch}`);
    i++;
  };
  const string = () => {
    ws();
    if (text[i] !== '"') error('expected a string');
    let j = i + 1;
    while (text[j] !== '"') {
      if (j >= text.length) error('unterminated string');
      j += text[j] === '\\' ? 2 : 1;
    }
    const s = JSON.parse(text.slice(i, j + 1));
    i = j + 1;
    return s;
  };
  const value = () => {
    ws();
    const ch = text[i];
    if (ch === '{') {
      i++;
      const m = new Map();
      ws();
      if (text[i] === '}') {
        i++;
        return m;
      }
      for (;;) {
        const k = string();
        expect(':');
        if (m.has(k)) error(`duplicate key ${k}`);
        m.set(k, value());
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        expect('}');
        return m;
      }
    }
    if (ch === '[') {
      i++;
      const a = [];
      ws();
      if (text[i] === ']') {
        i++;
        return a;
      }
      for (;;) {
        a.push(value());
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        expect(']');
        return a;
      }
    }
    if (ch === '"') return string();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) error('unexpected character');
    i = NUMBER.lastIndex;
    return m[1] !== undefined || m[2] !== undefined ? new JFloat(Number(m[0])) : BigInt(m[0]);
  };
  const v = value();
  ws();
  if (i !== text.length) error('trailing characters');
  return v;
}

// The document's own structure as plain JS values; payloads stay in the exact form above.
function plain(v, key) {
  if (key === 'payload') return v;
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [k, plain(x, k)]));
  if (Array.isArray(v)) return v.map((x) => plain(x));
  if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v;
  if (v instanceof JFloat) return v.v;
  return v;
}

const isBytesForm = (m) => m instanceof Map && m.size === 1 && typeof m.get('$bytes') === 'string';
const fmtFloat = (x) => (Object.is(x, -0) ? '-0' : String(x));

// One string per value in the CBOR data model, equal iff the values are (maps unordered).
function canon(v, fromJson) {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'boolean') return String(v);
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') return `f${fmtFloat(v)}`;
  if (v instanceof JFloat) return `f${fmtFloat(v.v)}`;
  if (typeof v === 'string') return JSON.stringify(v);
  if (v instanceof Uint8Array) return `h'${hex(v)}'`;
  if (v instanceof Simple) return `simple(${v.value})`;
  if (Array.isArray(v)) return `[${v.map((x) => canon(x, fromJson)).join(',')}]`;
  if (v instanceof Map) {
    if (fromJson && isBytesForm(v)) return `h'${v.get('$bytes')}'`;
    const entries = [...v].map(([k, x]) => `${canon(k, false)}:${canon(x, fromJson)}`);
    return `{${entries.sort().join(',')}}`;
  }
  throw new TypeError(`no canonical form for ${typeof v}`);
}

// JSON form -> the value cbor2 should encode.
function jsonToCbor(v) {
  if (v instanceof JFloat) return encodedNumber(v.v, 'f'); // a float even when integral
  if (Array.isArray(v)) return v.map(jsonToCbor);
  if (v instanceof Map) {
    if (isBytesForm(v)) return new Uint8Array(Buffer.from(v.get('$bytes'), 'hex'));
    return new Map([...v].map(([k, x]) => [k, jsonToCbor(x)]));
  }
  return v; // bigint, string, boolean, null
}

const ENCODE_OPTIONS = {cde: true, ignoreOriginalEncoding: false};
const encodeDeterministic = (jsonValue) => hex(cborEncode(jsonToCbor(jsonValue), ENCODE_OPTIONS));

// ---- replaying the cases ---------------------------------------------------------------------

function compareGood(frame, exp, problems) {
  const fields = [
    ['type', frame.type, exp.type], ['type_id', frame.typeId, exp.type_id],
    ['flags', frame.flags, exp.flags], ['key_id', frame.keyId, exp.key_id],
    ['stream_id', frame.streamId, exp.stream_id],
    ['sequence', frame.sequence, BigInt(exp.sequence)],
    ['timestamp_ms', frame.timestamp, BigInt(exp.timestamp_ms)],
    ['nonce', frame.nonce, exp.nonce],
  ];
  for (const [name, got, want] of fields) {
    if (got !== want) problems.push(`${name} is ${got}, expected ${want}`);
  }
  const got = canon(frame.payload, false);
  const want = canon(exp.payload, true);
  if (got !== want) problems.push(`payload decodes to ${got}, expected ${want}`);
  if (hex(frame.body) !== exp.payload_hex) problems.push('wire payload differs from payload_hex');
  let encoded;
  try {
    encoded = encodeDeterministic(exp.payload);
  } catch (e) {
    encoded = `<encode error: ${e.message}>`;
  }
  if (encoded !== exp.payload_hex) {
    problems.push(`deterministic encoding of the JSON payload is ${encoded}, expected ` +
      `${exp.payload_hex}`);
  }
}

function runCase(doc, c) {
  const limits = doc.limits;
  const ring = new KeyRing(doc.keys, doc.expired_keys);
  const server = c.receiver === 'server';
  if (!server && c.receiver !== 'client') return [`unknown receiver ${c.receiver}`];
  const cache = new NonceCache(doc.replay.skew_ms);
  const newGuard = () => new SessionGuard(server, server ? cache : null,
    server ? null : c.session_nonce, doc.replay.window);
  let guard = newGuard();
  const problems = [];
  c.frames.forEach((f, index) => {
    if (f.new_session) guard = newGuard();
    const buf = Buffer.from(f.hex, 'hex');
    const now = BigInt(f.now_ms);
    let got;
    try {
      const opened = openFrame(buf, ring, limits, now);
      if (opened === null) fail('MALFORMED_FRAME', 'incomplete at end of input');
      if (opened.end !== buf.length) fail('MALFORMED_FRAME', 'bytes after the frame');
      guard.check(opened.frame, now);
      got = {ok: true, frame: opened.frame};
    } catch (e) {
      if (!(e instanceof AtpError)) throw e;
      got = {ok: false, code: e.code, name: e.codeName, why: e.message};
    }
    const exp = f.expect;
    const mine = [];
    if (exp.ok) {
      if (!got.ok) mine.push(`expected ok, got ${got.name} (${got.code}): ${got.why}`);
      else compareGood(got.frame, exp, mine);
    } else {
      if (CODE_NAMES.get(exp.code) !== exp.error) {
        mine.push(`vector says code ${exp.code} is ${exp.error}`);
      }
      if (got.ok) mine.push(`expected ${exp.error} (${exp.code}), got ok`);
      else if (got.code !== exp.code) {
        mine.push(`expected ${exp.error} (${exp.code}), got ${got.name} (${got.code}): ${got.why}`);
      }
    }
    for (const p of mine) problems.push(`frame ${index}: ${p}`);
  });
  return problems;
}

function main(argv) {
  const file = argv[2] ?? DEFAULT_VECTORS;
  let doc;
  try {
    doc = plain(parseJson(readFileSync(file, 'utf8')));
  } catch (e) {
    console.error(`cannot read ${file}: ${e.message}`);
    return 2;
  }
  if (doc.format !== 1) {
    console.error(`${file}: unsupported vector format ${doc.format}`);
    return 2;
  }
  let passed = 0;
  let failed = 0;
  for (const c of doc.cases) {
    let problems;
    try {
      problems = runCase(doc, c);
    } catch (e) {
      problems = [`checker error: ${e.stack ?? e}`];
    }
    if (problems.length === 0) {
      passed++;
      console.log(`ok ${c.name}`);
    } else {
      failed++;
      console.log(`FAIL ${c.name}: ${problems.join('; ')}`);
    }
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}

process.exitCode = main(process.argv);
