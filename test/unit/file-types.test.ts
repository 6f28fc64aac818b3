/**
 * The allow-list the API documents show (ACCEPTED_MIME_TYPES) is exactly what detectType can
 * answer: every type named in lib/file-types.ts is on it, and it names nothing else.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { ACCEPTED_MIME_TYPES, detectType } from "../../lib/file-types";

describe("file types", () => {
	it("documents exactly the types detection answers", () => {
		const source = fs.readFileSync(path.join(__dirname, "..", "..", "lib", "file-types.ts"), "utf8");
		const code = source.slice(source.indexOf("] as const;"));
		const named = new Set([...code.matchAll(/"((?:image|video|audio|application|text)\/[a-z0-9.+-]+)"/g)].map(m => m[1]));
		assert.deepEqual([...named].sort(), [...ACCEPTED_MIME_TYPES].sort());
	});

	it("answers from the bytes, and refuses markup whatever its name", () => {
		assert.equal(detectType(Buffer.from("%PDF-1.7\n"), "x.png")?.mime, "application/pdf");
		assert.equal(detectType(Buffer.from("<svg xmlns='http://www.w3.org/2000/svg'/>"), "x.txt"), null);
		assert.equal(detectType(Buffer.from("a,b\n1,2\n"), "t.csv")?.mime, "text/csv");
	});
});
