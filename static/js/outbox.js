// The scanner's offline outbox: every scan, undo and finish is written here (IndexedDB) before
// it is sent, with the client id the server uses to answer a repeat with the first answer.
// A record is `pending` until its ack arrives, then `ok`, `duplicate` or `rejected`; pending
// records survive reloads and are sent again until answered (the server makes that safe).
//
// Records carry the signed-in user's name: after a change of user on a shared phone, another
// person's pending scans are kept but never sent under the new person's session.

const DB_NAME = "traitortrack";
const STORE = "outbox";
const KEEP_ANSWERED = 200;

function request(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function openDatabase() {
  const opening = indexedDB.open(DB_NAME, 1);
  opening.onupgradeneeded = () => {
    const store = opening.result.createObjectStore(STORE, { keyPath: "id" });
    store.createIndex("bySeq", ["user", "seq"]);
  };
  return request(opening);
}

let lastSeq = 0;
function nextSeq() {
  // Increasing across reloads (time based) and within a millisecond (the counter).
  lastSeq = Math.max(lastSeq + 1, Date.now() * 1000);
  return lastSeq;
}

class IndexedStore {
  constructor(db) {
    this.db = db;
  }

  async put(record) {
    const tx = this.db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).put(record);
    await new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  get(id) {
    return request(this.db.transaction(STORE).objectStore(STORE).get(id));
  }

  all(user) {
    const range = IDBKeyRange.bound([user, 0], [user, Number.MAX_SAFE_INTEGER]);
    return request(this.db.transaction(STORE).objectStore(STORE).index("bySeq").getAll(range));
  }

  async remove(ids) {
    const tx = this.db.transaction(STORE, "readwrite");
    for (const id of ids) tx.objectStore(STORE).delete(id);
    await new Promise((resolve) => {
      tx.oncomplete = resolve;
    });
  }
}

// Where IndexedDB is unavailable (some private modes): scans still work, but do not survive
// a reload; `durable` tells the page to say so.
class MemoryStore {
  constructor() {
    this.records = new Map();
  }

  async put(record) {
    this.records.set(record.id, structuredClone(record));
  }

  async get(id) {
    return structuredClone(this.records.get(id));
  }

  async all(user) {
    return [...this.records.values()].filter((r) => r.user === user).sort((a, b) => a.seq - b.seq);
  }

  async remove(ids) {
    for (const id of ids) this.records.delete(id);
  }
}

export class Outbox {
  constructor(store, user, durable) {
    this.store = store;
    this.user = user;
    this.durable = durable;
  }

  /** Keep `message` (it has an `id`) as pending, before anything is sent. `context` is what
   * the page wants back with the ack (never sent). */
  async add(message, context = {}) {
    const record = {
      id: message.id,
      user: this.user,
      seq: nextSeq(),
      message,
      context,
      outcome: "pending",
      reply: "",
      madeAt: Date.now(),
      answeredAt: null,
      dismissed: false,
    };
    await this.store.put(record);
    return record;
  }

  /** Record an ack: { record, first } (first: this is the first answer), or null when the
   * id is not one of this user's. */
  async settle(ack) {
    const record = await this.store.get(ack.id);
    if (!record || record.user !== this.user) return null;
    const first = record.outcome === "pending";
    record.outcome = ack.outcome;
    record.reply = ack.message ?? "";
    record.parent = ack.parent ?? null;
    record.answeredAt ??= Date.now();
    await this.store.put(record);
    return { record, first };
  }

  /** Everything of this user's, oldest first. */
  records() {
    return this.store.all(this.user);
  }

  async pending() {
    return (await this.records()).filter((r) => r.outcome === "pending");
  }

  async dismissRejected() {
    for (const record of await this.records()) {
      if (record.outcome === "rejected" && !record.dismissed) {
        record.dismissed = true;
        await this.store.put(record);
      }
    }
  }

  /** Forget old answered records (the newest are kept for the page's lists). */
  async prune() {
    const answered = (await this.records()).filter(
      (r) => r.outcome !== "pending" && (r.outcome !== "rejected" || r.dismissed),
    );
    const old = answered.slice(0, Math.max(answered.length - KEEP_ANSWERED, 0));
    if (old.length) await this.store.remove(old.map((r) => r.id));
  }
}

export async function openOutbox(user) {
  try {
    return new Outbox(new IndexedStore(await openDatabase()), user, true);
  } catch {
    return new Outbox(new MemoryStore(), user, false);
  }
}
