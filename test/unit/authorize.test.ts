/**
 * The Authorize middleware on a real broker (no transporter): an action's declarations decide who
 * may call it, whoever calls. The users and conversations services are stand-ins here; the
 * integration suites run the real ones.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type Context, ServiceBroker } from "moleculer";
import { AuthorizeMiddleware, memberOf, userOf } from "../../middlewares/authorize.middleware";

describe("Authorize middleware", () => {
	const broker = new ServiceBroker({ logger: false, middlewares: [AuthorizeMiddleware()] });
	const admins = new Set([1]);

	before(async () => {
		broker.createService({
			name: "users",
			actions: {
				isAdmin: { visibility: "public", handler: (ctx: Context<{ userId: number }>) => admins.has(ctx.params.userId) },
			},
		});
		broker.createService({
			name: "conversations",
			actions: {
				access: {
					visibility: "public",
					handler(ctx: Context<{ conversationId: string; userId: number }>) {
						if (ctx.params.conversationId !== "c1" || ctx.params.userId !== 2) throw Object.assign(new Error("Conversation not found"), { code: 404 });
						return { conv: { _id: "c1" }, membership: { user_id: 2 } };
					},
				},
			},
		});
		broker.createService({
			name: "widgets",
			actions: {
				open: { auth: false, handler: () => "anyone" },
				internal: { handler: () => "no declaration, no check" },
				mine: { openapi: { tag: "Users", summary: "x" }, handler: ctx => userOf(ctx).id },
				admin: { roles: ["admin"], handler: () => "admin" },
				profile: { owner: "id", params: { id: "number" }, handler: () => "owner" },
				inConversation: { member: "conversationId", params: { conversationId: "string" }, handler: ctx => memberOf(ctx).conv._id },
			},
		});
		await broker.start();
	});
	after(() => broker.stop());

	const as = (id: number, roles = ["user"]) => ({ meta: { user: { id, username: `u${id}`, roles } } });

	it("lets anyone call what is public or declares nothing", async () => {
		assert.equal(await broker.call("widgets.open"), "anyone");
		assert.equal(await broker.call("widgets.internal"), "no declaration, no check");
	});

	it("refuses an action declared for clients without a user (401), and hands the checked user on", async () => {
		await assert.rejects(broker.call("widgets.mine"), (err: { code: number }) => err.code === 401);
		await assert.rejects(broker.call("widgets.mine", {}, { meta: { user: { id: -4 } } }), (err: { code: number }) => err.code === 401);
		assert.equal(await broker.call("widgets.mine", {}, as(7)), 7);
	});

	it("reads the admin role from the users service, not from the token", async () => {
		assert.equal(await broker.call("widgets.admin", {}, as(1, ["admin"])), "admin");
		await assert.rejects(broker.call("widgets.admin", {}, as(3, ["user"])), (err: { code: number }) => err.code === 403);
		// A token that still says admin, for a user who is not one any more.
		await assert.rejects(broker.call("widgets.admin", {}, as(5, ["admin"])), (err: { code: number }) => err.code === 403);
	});

	it("lets a user act on itself, and an admin on anyone", async () => {
		assert.equal(await broker.call("widgets.profile", { id: 4 }, as(4)), "owner");
		assert.equal(await broker.call("widgets.profile", { id: 4 }, as(1)), "owner");
		await assert.rejects(broker.call("widgets.profile", { id: 4 }, as(5)), (err: { code: number }) => err.code === 403);
	});

	it("lets only members in, and gives the handler the membership", async () => {
		assert.equal(await broker.call("widgets.inConversation", { conversationId: "c1" }, as(2)), "c1");
		await assert.rejects(broker.call("widgets.inConversation", { conversationId: "c1" }, as(3)), (err: { code: number }) => err.code === 404);
	});
});
