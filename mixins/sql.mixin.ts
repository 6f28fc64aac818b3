/**
 * The SQL store of a service: moleculer-db with the Sequelize adapter on PostgreSQL
 * (DATABASE_URL) or, with no DATABASE_URL, on the embedded PGlite under DATA_DIR.
 * Tables come from versioned migrations (umzug), never from sync(); the generic CRUD
 * actions of moleculer-db are switched off so that every published action checks its caller.
 */
import type { Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import DbService from "moleculer-db";
import { NO_GENERIC_DB_ACTIONS } from "./db-actions";
import SqlAdapter from "moleculer-db-adapter-sequelize";
import { Sequelize, type ModelStatic, type Model } from "sequelize";
import { SequelizeStorage, Umzug } from "umzug";
import { config } from "../lib/config";
import { acquireEmbeddedPostgres, releaseEmbeddedPostgres } from "../lib/embedded-postgres";
import { addReadinessProbe, removeReadinessProbe } from "../lib/readiness";
import type { Migration } from "../lib/migrations/users";

export interface SqlMixinOptions<M> {
	/** Distinct per database, used for the migration advisory lock. */
	lockKey: number;
	migrations: Migration[];
	/** Define the service's models on the connection; `main` is moleculer-db's model. */
	defineModels: (sequelize: Sequelize) => M & { main: ModelStatic<Model> };
}

export interface SqlMixinThis<M> extends Service {
	sequelize: Sequelize;
	models: M;
	embeddedDataDir: string | null;
	adapter: { opts: unknown[]; connect(): Promise<void>; disconnect(): Promise<void> };
}

async function migrate(url: string, lockKey: number, migrations: Migration[]): Promise<void> {
	// A connection of its own: the advisory lock belongs to the session that took it.
	const db = new Sequelize(url, { logging: false, pool: { max: 1, min: 0 } });
	try {
		await db.query("SELECT pg_advisory_lock(:key)", { replacements: { key: lockKey } });
		const umzug = new Umzug({
			migrations,
			context: db.getQueryInterface(),
			storage: new SequelizeStorage({ sequelize: db, tableName: "schema_migrations" }),
			logger: undefined,
		});
		await umzug.up();
		await db.query("SELECT pg_advisory_unlock(:key)", { replacements: { key: lockKey } });
	} finally {
		await db.close();
	}
}

export function createSqlMixin<M>(options: SqlMixinOptions<M>): Partial<ServiceSchema> {
	const mixin: Partial<ServiceSchema<ServiceSettingSchema, SqlMixinThis<M>>> = {
		mixins: [DbService],
		// Placeholder so moleculer-db's created() accepts the schema; the real model is set in connect().
		model: { name: "placeholder", define: {} },
		actions: { ...NO_GENERIC_DB_ACTIONS },
		created(this: SqlMixinThis<M>) {
			// One adapter per service instance (moleculer-db made a MemoryAdapter before us).
			this.adapter = new (SqlAdapter as unknown as new () => object)() as unknown as SqlMixinThis<M>["adapter"];
			(this.adapter as unknown as { init(b: unknown, s: unknown): void }).init(this.broker, this);
		},
		methods: {
			async connect(this: SqlMixinThis<M>) {
				let url = config.databaseUrl;
				const embedded = !url;
				if (!url) {
					this.embeddedDataDir = config.dataDir;
					url = await acquireEmbeddedPostgres(this.embeddedDataDir);
				}
				try {
					await migrate(url, options.lockKey, options.migrations);
					this.sequelize = new Sequelize(url, {
						logging: false,
						// The embedded store is one session: one connection, so transactions never interleave.
						pool: embedded ? { max: 1, min: 0, acquire: 30_000 } : { max: 10, min: 0, acquire: 5_000 },
						// While PostgreSQL is away a request fails in seconds (503), not after the
						// request timeout: a connection attempt gives up after 3 s, a wait for one after 5 s.
						...(embedded ? {} : { dialectOptions: { connectionTimeoutMillis: 3_000 } }),
					});
					const models = options.defineModels(this.sequelize);
					this.models = models;
					this.schema.model = models.main;
					// moleculer-db-adapter-sequelize: an instance as first argument, noSync in the fourth.
					this.adapter.opts = [this.sequelize, undefined, undefined, { noSync: true }];
					await this.adapter.connect();
					// moleculer-db's own connect() would call this; ours replaces it.
					if (typeof this.schema.afterConnected === "function") await this.schema.afterConnected.call(this);
					const sequelize = this.sequelize;
					addReadinessProbe(this.broker, "postgresql", () => sequelize.query("SELECT 1"));
				} catch (err) {
					await this.disconnect();
					throw err;
				}
			},
			async disconnect(this: SqlMixinThis<M>) {
				removeReadinessProbe(this.broker, "postgresql");
				if (this.sequelize) await this.sequelize.close().catch(() => undefined);
				if (this.embeddedDataDir) {
					const dir = this.embeddedDataDir;
					this.embeddedDataDir = null;
					await releaseEmbeddedPostgres(dir);
				}
			},
		},
	};
	return mixin as Partial<ServiceSchema>;
}
