import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ATTACHMENT_PATTERN, FILE_ID_PATTERN, FILE_PATH_PATTERN, FILE_REF_PATTERN, fileIdOfPath, newFileId } from "../../lib/file-ids";

const ID = "0123456789abcdef0123456789abcdef";

describe("file ids and references (lib/file-ids.ts)", () => {
	it("makes ids its own patterns accept, each new", () => {
		const ids = new Set(Array.from({ length: 100 }, () => newFileId()));
		assert.equal(ids.size, 100);
		for (const id of ids) assert.match(id, FILE_ID_PATTERN);
	});

	it("a stored reference is /files/<id> and nothing else", () => {
		assert.equal(fileIdOfPath(`/files/${ID}`), ID);
		for (const bad of [ID, `/files/${ID.toUpperCase()}`, `/files/${ID}x`, `https://x.test/files/${ID}`, `/files/${ID.slice(1)}`, null]) {
			assert.equal(fileIdOfPath(bad), null, String(bad));
		}
		assert.ok(!FILE_PATH_PATTERN.test(`/files/${ID}/../x`));
	});

	it("an attachment may be the id, its path or a full URL ending in its path", () => {
		for (const good of [ID, `/files/${ID}`, `https://chat.example.com/files/${ID}`, `http://localhost:3000/files/${ID}`]) assert.match(good, ATTACHMENT_PATTERN, good);
		for (const bad of [`/files/${ID.slice(2)}`, `ftp://x/files/${ID}`, `https://x y/files/${ID}`, `/files/${ID}?x=1`, "/files/../etc/passwd"]) assert.doesNotMatch(bad, ATTACHMENT_PATTERN, bad);
	});

	it("finds the id at the end of a reference, its query or fragment ignored", () => {
		assert.equal(FILE_REF_PATTERN.exec(`https://x.test/files/${ID}?download=1`)?.[1], ID);
		assert.equal(FILE_REF_PATTERN.exec(`${ID}#top`)?.[1], ID);
		assert.equal(FILE_REF_PATTERN.exec(`/other/${ID}`), null);
	});
});
