/**
 * moleculer-runner, with two changes for this project:
 * - moleculer.config.ts reads the environment itself, so the runner's own env overlay
 *   (which would replace the tuned AMQP transporter object with the bare TRANSPORTER string)
 *   is off;
 * - SERVICES names services (`api,users`), resolved to services/<name>.service.ts.
 * Flags are moleculer-runner's: --hot (hot reload), --repl, --config.
 */
import path from "node:path";
import { Runner } from "moleculer";
import { ALL_SERVICES, config } from "../lib/config";

const SERVICES_DIR = path.resolve(__dirname, "..", "services");

class ParleyRunner extends Runner {
	override overwriteFromEnv(obj: unknown): unknown {
		return obj;
	}

	override loadServices(): void {
		const broker = this.broker;
		if (!broker) throw new Error("Broker not created");
		const wanted = config.services;
		const known: readonly string[] = ALL_SERVICES;
		const unknown = wanted.filter(name => !known.includes(name));
		if (unknown.length > 0) {
			broker.logger.warn(`SERVICES names services this version does not have, skipped: ${unknown.join(", ")} (known: ${known.join(", ")})`);
		}
		const names = wanted.filter(name => known.includes(name));
		if (names.length === 0) throw new Error(`No service to run: SERVICES=${process.env.SERVICES ?? ""}`);
		for (const name of names) broker.loadService(path.join(SERVICES_DIR, `${name}.service.ts`));
	}
}

new ParleyRunner().start(process.argv).catch((err: unknown) => {
	console.error(err);
	process.exit(1);
});
