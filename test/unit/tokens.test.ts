import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import jwt from "jsonwebtoken";
import { extractBearer, hashRefreshToken, newRefreshToken, signAccessToken, verifyAccessSession } from "../../lib/tokens";

const SECRET = "unit-test-secret-0123456789abcdef";

describe("access tokens", () => {
	before(() => {
		process.env.JWT_SECRET = SECRET;
		process.env.ACCESS_TOKEN_TTL = "60";
	});

	it("round-trips the user with sub, username, roles, iat and exp", () => {
		const token = signAccessToken({ id: 7, username: "ann", roles: ["user"] });
		assert.deepEqual(verifyAccessSession(token)?.user, { id: 7, username: "ann", roles: ["user"] });
		const claims = jwt.decode(token) as jwt.JwtPayload;
		assert.equal(claims.sub, "7");
		assert.equal(claims.exp! - claims.iat!, 60);
		assert.equal((jwt.decode(token, { complete: true }) as jwt.Jwt).header.alg, "HS256");
	});

	it("refuses expired, foreign, alg none, HS512 and malformed tokens", () => {
		const now = Math.floor(Date.now() / 1000);
		const claims = { sub: "7", username: "ann", roles: ["admin"] };
		const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString("base64url")}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.`;
		for (const token of [
			jwt.sign({ ...claims, exp: now - 1 }, SECRET),
			jwt.sign(claims, "some-other-secret-0123456789"),
			none,
			jwt.sign(claims, SECRET, { algorithm: "HS512" }),
			jwt.sign({ ...claims, sub: "not-a-number" }, SECRET),
			jwt.sign({ sub: "7" }, SECRET),
			"a.b.c",
			"",
			null,
		]) {
			assert.equal(verifyAccessSession(token), null, String(token));
		}
	});

	it("reads 'Bearer <jwt>' and a raw JWT alike", () => {
		assert.equal(extractBearer("Bearer abc"), "abc");
		assert.equal(extractBearer("bearer   abc "), "abc");
		assert.equal(extractBearer("abc"), "abc");
		assert.equal(extractBearer(""), null);
		assert.equal(extractBearer(42), null);
		assert.equal(extractBearer(undefined), null);
	});
});

describe("refresh tokens", () => {
	it("are random, URL-safe, and stored only as a SHA-256 hash", () => {
		const a = newRefreshToken();
		const b = newRefreshToken();
		assert.notEqual(a, b);
		assert.match(a, /^[A-Za-z0-9_-]{43}$/);
		assert.match(hashRefreshToken(a), /^[0-9a-f]{64}$/);
		assert.equal(hashRefreshToken(a), hashRefreshToken(a));
		assert.notEqual(hashRefreshToken(a), hashRefreshToken(b));
	});
});
