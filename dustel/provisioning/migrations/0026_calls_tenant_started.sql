-- depends: 0025_portal
-- transactional: false
-- Issue 28: the Kundencenter lists a tenant's calls newest first, page by
-- page (keyset: started_at, node, call_id).  Without this index each page
-- read and sorted every call of the tenant (bench/portal.py: a tenant with
-- 1 M calls).  Built without blocking admissions (CONCURRENTLY: outside a
-- transaction, as 0017).
CREATE INDEX CONCURRENTLY calls_tenant_started ON calls (tenant_id, started_at, node, call_id);
