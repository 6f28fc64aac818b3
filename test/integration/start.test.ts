/**
 * `npm start` with nothing set: the whole system in one process on embedded stores.
 * Data and the generated JWT secret survive a restart; SIGTERM stops it cleanly.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, it } from "node:test";
import { freePort, startNode, waitForHealth, type NodeProcess } from "../helpers/processes";
import { ALL_SERVICES } from "../../lib/config";
import { http, newIdentity, tempDir } from "../helpers/system";

describe("npm start with nothing set (embedded mode)", () => {
	const dataDir = tempDir("parley-start-");
	const running: NodeProcess[] = [];
	after(async () => {
		for (const p of running) await p.stop("SIGKILL");
	});

	it("serves, keeps its data across a restart, and stops cleanly on SIGTERM", async () => {
		const port = await freePort();
		const base = `http://127.0.0.1:${port}`;
		// Only PORT and DATA_DIR, so the test does not touch ./data; everything else is default.
		const env = { PORT: String(port), DATA_DIR: dataDir, BCRYPT_ROUNDS: "4" };

		const first = startNode(env, dataDir, "first");
		running.push(first);
		const health = await waitForHealth(base, ["api", "users"]);
		assert.deepEqual([...health.services].sort(), [...ALL_SERVICES].sort());
		const id = newIdentity("persist");
		const reg = await http(base, "POST", "/auth/register", { body: id });
		assert.equal(reg.status, 201, reg.text);
		const friend = await http(base, "POST", "/auth/register", { body: newIdentity("friend") });
		const conv = await http(base, "POST", "/conversations", { token: reg.body.accessToken, body: { participants: [friend.body.user.id], type: "private" } });
		assert.equal(conv.status, 201, conv.text);
		const sent = await http(base, "POST", `/conversations/${conv.body.id}/messages`, { token: reg.body.accessToken, body: { content: "kept across restarts" } });
		assert.equal(sent.status, 200, sent.text);
		const stopped = await first.stop("SIGTERM");
		assert.equal(stopped.code, 0, `exit after SIGTERM: ${JSON.stringify(stopped)}\n${first.log().slice(-2000)}`);
		assert.ok(fs.existsSync(path.join(dataDir, "jwt-secret")), "a JWT secret was generated in DATA_DIR");
		assert.ok(fs.existsSync(path.join(dataDir, "pg")), "the embedded SQL store lives in DATA_DIR");
		assert.ok(fs.existsSync(path.join(dataDir, "docs", "messages.db")), "the embedded document store lives in DATA_DIR");

		const second = startNode(env, dataDir, "second");
		running.push(second);
		await waitForHealth(base, ["api", "users"]);
		const login = await http(base, "POST", "/auth/login", { body: { email: id.email, password: id.password } });
		assert.equal(login.status, 200, login.text);
		assert.equal(login.body.user.id, reg.body.user.id);
		// The access token issued before the restart still verifies: the secret was kept.
		const me = await http(base, "GET", "/users/me", { token: reg.body.accessToken });
		assert.equal(me.status, 200);
		const refreshed = await http(base, "POST", "/auth/refresh", { body: { refreshToken: reg.body.refreshToken } });
		assert.equal(refreshed.status, 200);
		const history = await http(base, "GET", `/conversations/${conv.body.id}/messages`, { token: reg.body.accessToken });
		assert.deepEqual(history.body.map((m: { content: string; seq: number }) => [m.seq, m.content]), [[1, "kept across restarts"]]);
		// The sequence continues where it stopped: no seq is reused after a restart.
		const next = await http(base, "POST", `/conversations/${conv.body.id}/messages`, { token: reg.body.accessToken, body: { content: "after" } });
		assert.equal(next.body.seq, 2);
		const stopped2 = await second.stop("SIGTERM");
		assert.equal(stopped2.code, 0);
	});
});
