import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { NODE_FLAGS } from "../../lib/node-flags";

const ROOT = path.resolve(__dirname, "..", "..");

describe("the V8 flags of a node (lib/node-flags.ts)", () => {
	it("npm start, dev and repl run node with every one of them, before the runner", () => {
		const scripts = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8")).scripts as Record<string, string>;
		for (const name of ["start", "dev", "repl"]) {
			const words = scripts[name].split(/\s+/);
			assert.equal(words[0], "node", name);
			const runner = words.indexOf("bin/runner.ts");
			assert.ok(runner > 0, name);
			for (const flag of NODE_FLAGS) assert.ok(words.slice(1, runner).includes(flag), `npm run ${name} lacks ${flag}: ${scripts[name]}`);
		}
	});

	it("the Dockerfile's CMD runs node with every one of them too", () => {
		const cmd = fs
			.readFileSync(path.join(ROOT, "Dockerfile"), "utf8")
			.split("\n")
			.find(l => l.startsWith("CMD "));
		assert.ok(cmd, "a CMD line");
		const words = JSON.parse(cmd.slice(4)) as string[];
		assert.equal(words[0], "node");
		const runner = words.indexOf("bin/runner.ts");
		for (const flag of NODE_FLAGS) assert.ok(words.slice(1, runner).includes(flag), `CMD lacks ${flag}: ${cmd}`);
	});
});
