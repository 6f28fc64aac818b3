import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, it } from "node:test";
import { ALL_SERVICES, config, jwtSecret } from "../../lib/config";

const saved = { ...process.env };
afterEach(() => {
	for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
	Object.assign(process.env, saved);
});

describe("config", () => {
	it("has the contract's defaults", () => {
		for (const k of ["PORT", "SERVICES", "RATE_LIMIT", "RATE_LIMIT_AUTH", "CORS_ORIGINS", "TRANSPORTER", "DATABASE_URL", "NAMESPACE"]) delete process.env[k];
		assert.equal(config.port, 3000);
		assert.deepEqual(config.services, [...ALL_SERVICES]);
		for (const name of ["api", "users", "conversations", "messages"]) assert.ok(ALL_SERVICES.includes(name as never), name);
		assert.ok(config.rateLimit >= 20);
		assert.ok(config.rateLimitAuth >= 10);
		assert.deepEqual(config.corsOrigins, ["http://localhost:3000", "http://localhost:5173"]);
		assert.equal(config.transporter, null);
		assert.equal(config.databaseUrl, null);
		assert.equal(config.namespace, "");
	});

	it("reads lists and numbers from the environment and rejects nonsense", () => {
		process.env.SERVICES = " api , users ,";
		process.env.RATE_LIMIT = "0";
		process.env.PORT = "8080";
		assert.deepEqual(config.services, ["api", "users"]);
		assert.equal(config.rateLimit, 0);
		assert.equal(config.port, 8080);
		process.env.RATE_LIMIT = "lots";
		assert.throws(() => config.rateLimit, /RATE_LIMIT/);
	});

	it("generates a JWT secret once in DATA_DIR and reuses it; requires one in production", () => {
		const dir = fs.mkdtempSync(path.join(os.tmpdir(), "parley-cfg-"));
		delete process.env.JWT_SECRET;
		process.env.DATA_DIR = dir;
		const first = jwtSecret().export().toString("utf8");
		const file = path.join(dir, "jwt-secret");
		assert.equal(fs.readFileSync(file, "utf8"), first);
		assert.equal(fs.statSync(file).mode & 0o777, 0o600);
		process.env.DATA_DIR = fs.mkdtempSync(path.join(os.tmpdir(), "parley-cfg-"));
		process.env.DATA_DIR = dir;
		assert.equal(jwtSecret().export().toString("utf8"), first);

		process.env.DATA_DIR = fs.mkdtempSync(path.join(os.tmpdir(), "parley-cfg-"));
		process.env.NODE_ENV = "production";
		assert.throws(() => jwtSecret(), /JWT_SECRET is required/);
		process.env.JWT_SECRET = "short";
		assert.throws(() => jwtSecret(), /at least 16/);
		process.env.JWT_SECRET = "a-long-enough-production-secret";
		assert.equal(jwtSecret().export().toString("utf8"), "a-long-enough-production-secret");
	});
});
