/**
 * The embedded document store keeps what it acknowledged: a real node (`npm start`, embedded
 * mode) is killed with SIGKILL the moment acknowledgements come back, with more sends still in
 * flight; started again on the same DATA_DIR it has every acknowledged message, numbered 1, 2, 3 …
 * without a gap, and numbering goes on after the last one stored.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { freePort, startNode, waitForHealth, type NodeProcess } from "../helpers/processes";
import { call, connectSocket, type Ack, type TestSocket } from "../helpers/sockets";
import { http, registerUser, tempDir } from "../helpers/system";

const SERVICES = ["api", "users", "conversations", "messages"];

describe("embedded store: acknowledged messages survive SIGKILL", () => {
	const dataDir = tempDir("parley-durable-");
	const running: NodeProcess[] = [];
	const sockets: TestSocket[] = [];
	after(async () => {
		for (const s of sockets) s.close();
		for (const p of running) await p.stop("SIGKILL");
	});

	it("has every acked message after a kill right after the acks, with gap-free seq", { timeout: 180_000 }, async () => {
		const port = await freePort();
		const base = `http://127.0.0.1:${port}`;
		const env = { PORT: String(port), DATA_DIR: dataDir, BCRYPT_ROUNDS: "4", RATE_LIMIT: "0", RATE_LIMIT_AUTH: "0" };

		const first = startNode(env, dataDir, "first");
		running.push(first);
		await waitForHealth(base, SERVICES);
		const [a, b] = [await registerUser(base, "dura"), await registerUser(base, "durb")];
		const [sa, sb] = [await connectSocket(base, a.accessToken), await connectSocket(base, b.accessToken)];
		sockets.push(sa, sb);
		const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
		await call(sb, "conversation:accept", { conversationId: conv.id });

		const acked = new Map<number, { id: string; content: string }>();
		const keep = (m: { seq: number; id: string; content: string }) => {
			assert.ok(!acked.has(m.seq), `seq ${m.seq} acknowledged twice`);
			acked.set(m.seq, { id: m.id, content: m.content });
		};
		for (let i = 0; i < 10; i++) keep(await call(sa, "message:send", { conversationId: conv.id, content: `one by one ${i}`, clientId: `s${i}` }));

		// A burst from both sides; SIGKILL as the 45th of 60 acks arrives, the rest still in flight.
		// Acks that came in the same read as that one were sent before the kill: they count too.
		const BURST = 60;
		const KILL_AT = 45;
		let answered = 0;
		await new Promise<void>((resolve, reject) => {
			for (let i = 0; i < BURST; i++) {
				const socket = i % 2 ? sb : sa;
				socket.emit("message:send", { conversationId: conv.id, content: `burst ${i}`, clientId: `b${i}` }, (ack: Ack) => {
					if (!ack.ok) return reject(new Error(`send ${i}: ${JSON.stringify(ack.error)}`));
					keep(ack.data);
					if (++answered === KILL_AT) {
						first.child.kill("SIGKILL");
						resolve();
					}
				});
			}
		});
		const exit = await first.exited;
		assert.equal(exit.signal, "SIGKILL");
		for (const s of sockets) s.close();
		assert.ok(acked.size >= 10 + KILL_AT, `acked ${acked.size}`);

		const second = startNode(env, dataDir, "second");
		running.push(second);
		await waitForHealth(base, SERVICES);
		const login = await http(base, "POST", "/auth/login", { body: { email: a.email, password: a.password } });
		assert.equal(login.status, 200, login.text);
		const sa2 = await connectSocket(base, login.body.accessToken);
		sockets.push(sa2);
		const stored: { seq: number; id: string; content: string }[] = await call(sa2, "message:list", { conversationId: conv.id, limit: 100 });
		const seqs = stored.map(m => m.seq).sort((x, y) => x - y);
		assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), "seq 1..n without a gap or a repeat");
		const bySeq = new Map(stored.map(m => [m.seq, m]));
		for (const [seq, m] of acked) {
			const got = bySeq.get(seq);
			assert.ok(got, `acknowledged message seq ${seq} (${m.content}) was lost; stored up to ${seqs.at(-1)}`);
			assert.equal(got.id, m.id);
			assert.equal(got.content, m.content);
		}
		assert.ok(seqs.length <= 10 + BURST);

		// Numbering goes on after the last stored message.
		const next = await call(sa2, "message:send", { conversationId: conv.id, content: "after the crash" });
		assert.equal(next.seq, seqs.length + 1);
		sa2.close();
		const stopped = await second.stop("SIGTERM");
		assert.equal(stopped.code, 0, `exit after SIGTERM: ${JSON.stringify(stopped)}\n${second.log().slice(-2000)}`);
	});
});
