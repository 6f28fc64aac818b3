/**
 * Moleculer's local discoverer, checking the remote nodes' heartbeats every second.
 *
 * Moleculer checks them every `heartbeatTimeout` seconds, so a node killed without a word (SIGKILL,
 * power loss) is dropped 15 to 17 s after its last heartbeat, or up to one check period later:
 * with 5-s beats and a 15-s timeout, up to about 32 s after the kill (28 s was measured in a CI
 * run). Presence promises "offline within 30 s" for the users of a gateway that died, and every
 * node should stop calling a dead one soon. Checked every second, a dead node is dropped about 10
 * to 18 s after the kill; the check only reads the registry in memory.
 */
import { Discoverers } from "moleculer";

const CHECK_EVERY_MS = 1_000;

export class PromptDiscoverer extends Discoverers.Local {
	override startHeartbeatTimers(): void {
		super.startHeartbeatTimers();
		if (!this.checkNodesTimer) return; // heartbeats disabled (the TCP transporter has its own)
		clearInterval(this.checkNodesTimer);
		this.checkNodesTimer = setInterval(() => this.checkRemoteNodes(), CHECK_EVERY_MS);
		this.checkNodesTimer.unref();
	}
}
