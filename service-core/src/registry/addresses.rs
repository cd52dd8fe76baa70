//! The registry with Kubernetes 1.33's ClusterIP allocator
//! ([`RegistryConfig::with_ip_addresses`]): ServiceCIDR objects under
//! `PREFIX/servicecidrs/NAME`, one IPAddress object per ClusterIP under
//! `PREFIX/ipaddresses/IP`. Uniqueness is the store's: an address is taken by creating its
//! key (`Precondition::Absent`), so API server replicas never hand one out twice, and no
//! key is shared by every allocation.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Instant;

use super::repair::{RepairReport, event as event_for};
use super::{ApiError, OpError, Precondition, Reason, Registry, RegistryConfig, Store, StoreError};
use crate::alloc::{AllocError, ServiceCidrAllocator, ip_address_object};
use crate::model::{
    DEFAULT_SERVICE_CIDR, IpAddressObject, IpFamily, ParentReference, SERVICE_CIDR_FINALIZER,
    ServiceCidr,
};
use crate::random::Random;
use crate::valid::ServiceKey;
use crate::validation;

impl RegistryConfig {
    pub(super) fn service_cidr_key(&self, name: &str) -> String {
        format!("{}{name}", self.service_cidrs_prefix())
    }

    pub(super) fn ip_address_key(&self, ip: IpAddr) -> String {
        format!("{}{ip}", self.ip_addresses_prefix())
    }
}

/// How many candidates one allocation tries before giving up on a store other replicas
/// keep writing to.
const ATTEMPTS: usize = 16;

fn cidr_error(name: &str, errors: Vec<validation::FieldError>) -> ApiError {
    let v = validation::ValidationError::new("ServiceCIDR", name, errors);
    ApiError {
        code: 422,
        reason: Reason::Invalid,
        message: v.to_string(),
        causes: v.errors,
    }
}

impl<S: Store, R: Random> Registry<S, R> {
    /// Stores the default ServiceCIDR (`kubernetes`, the configured ranges) unless it
    /// exists, and reads the state.
    pub(super) fn init_addresses(&mut self) -> Result<(), StoreError> {
        let cidrs: Vec<String> = self
            .config
            .service_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        let refs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
        let default = ServiceCidr::new(DEFAULT_SERVICE_CIDR, &refs);
        let bytes = serde_json::to_vec(&default).unwrap_or_default();
        self.store.put(
            &self.config.service_cidr_key(DEFAULT_SERVICE_CIDR),
            &bytes,
            Precondition::Absent,
        )?;
        self.reload_addresses()
            .map_err(|e| StoreError::new(e.message))?;
        Ok(())
    }

    /// The ServiceCIDRs and IPAddresses as stored now.
    /// The stored ServiceCIDRs, and the IPAddresses with their store versions.
    #[allow(clippy::type_complexity)]
    fn read_addresses(&self) -> Result<(Vec<ServiceCidr>, Vec<(IpAddressObject, u64)>), ApiError> {
        let cidrs = self
            .store
            .list(&self.config.service_cidrs_prefix())
            .map_err(ApiError::internal)?
            .into_iter()
            .map(|(key, v)| {
                serde_json::from_slice::<ServiceCidr>(&v.value).map_err(|e| {
                    ApiError::internal(format!("stored ServiceCIDR {key} does not decode: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ips = self
            .store
            .list(&self.config.ip_addresses_prefix())
            .map_err(ApiError::internal)?
            .into_iter()
            .map(|(key, v)| {
                serde_json::from_slice::<IpAddressObject>(&v.value)
                    .map(|o| (o, v.version))
                    .map_err(|e| {
                        ApiError::internal(format!("stored IPAddress {key} does not decode: {e}"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((cidrs, ips))
    }

    /// Reads the store into the view; returns each stored address's version.
    fn reload_addresses(&mut self) -> Result<std::collections::HashMap<IpAddr, u64>, ApiError> {
        let (cidrs, ips) = self.read_addresses()?;
        let versions = ips
            .iter()
            .filter_map(|(o, v)| Some((o.metadata.name().parse().ok()?, *v)))
            .collect();
        let objects: Vec<IpAddressObject> = ips.into_iter().map(|(o, _)| o).collect();
        let a = ServiceCidrAllocator::from_objects(&cidrs, &objects).map_err(ApiError::internal)?;
        self.addresses = Some(a);
        Ok(versions)
    }

    /// The ServiceCIDRs and allocated addresses as stored now.
    ///
    /// # Errors
    /// The registry does not use IPAddress objects, or the store failed.
    pub fn service_cidr_allocator(&self) -> Result<ServiceCidrAllocator, ApiError> {
        if !self.config.ip_addresses {
            return Err(ApiError::internal(
                "this registry allocates ClusterIPs from bitmaps, not ServiceCIDRs",
            ));
        }
        let (cidrs, ips) = self.read_addresses()?;
        let objects: Vec<IpAddressObject> = ips.into_iter().map(|(o, _)| o).collect();
        ServiceCidrAllocator::from_objects(&cidrs, &objects).map_err(ApiError::internal)
    }

    /// Takes an address of `family` for the Service `owner`: `ip`, or the next free one.
    /// Candidates come from the last known state; the store's create-if-absent decides.
    pub(super) fn take_address(
        &mut self,
        family: &IpFamily,
        ip: Option<IpAddr>,
        owner: &ServiceKey,
    ) -> Result<IpAddr, OpError> {
        let parent = ParentReference::service(&owner.namespace, &owner.name);
        let mut reloaded = false;
        for _ in 0..ATTEMPTS {
            let Some(view) = self.addresses.as_mut() else {
                return Err(OpError::NotInitialized("ipaddresses"));
            };
            let candidate = match ip {
                Some(ip) => view.allocate(ip, parent.clone()).map(|()| ip),
                None => view.allocate_next(family, parent.clone(), &mut self.rng),
            };
            let candidate = match candidate {
                Ok(c) => c,
                // The view may be behind (ranges added, addresses released elsewhere):
                // read the store once before giving up.
                Err(_) if !reloaded => {
                    reloaded = true;
                    self.reload_addresses()
                        .map_err(|e| OpError::Store(StoreError::new(e.message)))?;
                    continue;
                }
                Err(e) => return Err(OpError::Alloc(e)),
            };
            let object = ip_address_object(candidate, parent.clone());
            let bytes = serde_json::to_vec(&object).unwrap_or_default();
            let key = self.config.ip_address_key(candidate);
            if self
                .store
                .put(&key, &bytes, Precondition::Absent)?
                .is_some()
            {
                return Ok(candidate);
            }
            // Another replica holds it: learn who, and try again.
            if let Some(view) = self.addresses.as_mut() {
                view.release(candidate);
            }
            self.reload_addresses()
                .map_err(|e| OpError::Store(StoreError::new(e.message)))?;
            reloaded = true;
            if ip.is_some() {
                return Err(OpError::Alloc(AllocError::Allocated(
                    crate::alloc::Resource::Ip,
                )));
            }
        }
        Err(OpError::Contention("ipaddresses"))
    }

    /// Deletes an address's IPAddress; Ok(false) when it was not allocated.
    pub(super) fn release_address(&mut self, ip: IpAddr) -> Result<bool, OpError> {
        if let Some(view) = self.addresses.as_mut() {
            view.release(ip);
        }
        let key = self.config.ip_address_key(ip);
        for _ in 0..ATTEMPTS {
            let Some(current) = self.store.get(&key)? else {
                return Ok(false);
            };
            if self.store.delete(&key, current.version)? {
                return Ok(true);
            }
        }
        Err(OpError::Contention("ipaddresses"))
    }

    /// Adds a ServiceCIDR (validated as the API server does): Services can take addresses
    /// from it at once.
    ///
    /// # Errors
    /// 422 when invalid (or an IPv6 range shorter than /64), 409 when one of that name
    /// exists, 500 when the registry uses bitmaps or the store failed.
    pub fn create_service_cidr(&mut self, mut sc: ServiceCidr) -> Result<ServiceCidr, ApiError> {
        if !self.config.ip_addresses {
            return Err(ApiError::internal(
                "ServiceCIDRs need the IPAddress allocator (RegistryConfig::with_ip_addresses)",
            ));
        }
        let name = sc.metadata.name().to_owned();
        validation::validate_service_cidr(&sc).map_err(|e| cidr_error(&name, e.errors))?;
        // The allocator's own refusals (an IPv6 range shorter than /64).
        ServiceCidrAllocator::new().add(&sc).map_err(|e| {
            cidr_error(
                &name,
                vec![validation::FieldError::invalid(
                    &validation::Path::new("spec").child("cidrs"),
                    validation::BadValue::StrList(sc.spec.cidrs.clone()),
                    &e,
                )],
            )
        })?;
        sc.api_version = Some("networking.k8s.io/v1".into());
        sc.kind = Some("ServiceCIDR".into());
        let finalizers = sc
            .metadata
            .extra
            .entry("finalizers".to_owned())
            .or_insert_with(|| serde_json::json!([]));
        if let Some(list) = finalizers.as_array_mut()
            && !list.iter().any(|f| f == SERVICE_CIDR_FINALIZER)
        {
            list.push(SERVICE_CIDR_FINALIZER.into());
        }
        let bytes = serde_json::to_vec(&sc).map_err(ApiError::internal)?;
        let key = self.config.service_cidr_key(&name);
        match self
            .store
            .put(&key, &bytes, Precondition::Absent)
            .map_err(ApiError::internal)?
        {
            Some(_) => {}
            None => {
                return Err(ApiError {
                    code: 409,
                    reason: Reason::AlreadyExists,
                    message: format!("servicecidrs.networking.k8s.io {name:?} already exists"),
                    causes: Vec::new(),
                });
            }
        }
        self.reload_addresses()?;
        Ok(sc)
    }

    /// Every stored ServiceCIDR.
    ///
    /// # Errors
    /// The store failed.
    pub fn list_service_cidrs(&self) -> Result<Vec<ServiceCidr>, ApiError> {
        Ok(self.read_addresses()?.0)
    }

    /// Deletes a ServiceCIDR. While allocated addresses only it covers remain, its
    /// finalizer keeps it: it is marked as being deleted (no new addresses come from it)
    /// and returned with the addresses that hold it; deleting it again once they are gone
    /// removes it.
    ///
    /// # Errors
    /// 404 when it does not exist; 500 when the store failed.
    pub fn delete_service_cidr(
        &mut self,
        name: &str,
        now: &str,
    ) -> Result<(ServiceCidr, Vec<IpAddr>), ApiError> {
        let key = self.config.service_cidr_key(name);
        let Some(current) = self.store.get(&key).map_err(ApiError::internal)? else {
            return Err(ApiError {
                code: 404,
                reason: Reason::NotFound,
                message: format!("servicecidrs.networking.k8s.io {name:?} not found"),
                causes: Vec::new(),
            });
        };
        let mut sc: ServiceCidr =
            serde_json::from_slice(&current.value).map_err(ApiError::internal)?;
        self.reload_addresses()?;
        let blocking = self
            .addresses
            .as_ref()
            .map(|a| a.blocking_deletion(name))
            .unwrap_or_default();
        if blocking.is_empty() {
            self.store
                .delete(&key, current.version)
                .map_err(ApiError::internal)?;
        } else if sc.metadata.deletion_timestamp.is_none() {
            sc.metadata.deletion_timestamp = Some(now.to_owned());
            let bytes = serde_json::to_vec(&sc).map_err(ApiError::internal)?;
            self.store
                .put(&key, &bytes, Precondition::Version(current.version))
                .map_err(ApiError::internal)?;
        }
        self.reload_addresses()?;
        Ok((sc, blocking))
    }

    /// The IPAddress side of a repair pass (`RepairIPAddress`): creates missing IPAddress
    /// objects, recreates those held for another owner, deletes those no Service uses once
    /// the leak grace has passed, and reports Service addresses outside every ServiceCIDR.
    pub(super) fn repair_addresses(
        &mut self,
        now: Instant,
        report: &mut RepairReport,
    ) -> Result<(), ApiError> {
        let services = self.list()?;
        let valid: Vec<_> = services
            .iter()
            .filter_map(|s| validation::validate_service(s).ok())
            .collect();
        // One read: the view to compare with, and the versions leaks are timed by.
        let versions = self.reload_addresses()?;
        let Some(view) = self.addresses.clone() else {
            return Ok(());
        };
        let found = view.repair(&valid);

        let by_key = |key: &ServiceKey| {
            services
                .iter()
                .find(|s| s.metadata.namespace() == key.namespace && s.metadata.name() == key.name)
        };
        for (key, ip) in &found.out_of_range {
            event_for(
                report,
                by_key(key),
                "ClusterIPOutOfRange",
                format!(
                    "Cluster IP [{}]: {ip} is not within any configured Service CIDR; please recreate service",
                    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
                ),
            );
        }
        for (ip, owner) in found.missing.iter().chain(&found.wrong_owner) {
            let key = self.config.ip_address_key(*ip);
            if let Some(current) = self.store.get(&key).map_err(ApiError::internal)? {
                self.store
                    .delete(&key, current.version)
                    .map_err(ApiError::internal)?;
            }
            let object = ip_address_object(*ip, owner.clone());
            let bytes = serde_json::to_vec(&object).map_err(ApiError::internal)?;
            self.store
                .put(&key, &bytes, Precondition::Absent)
                .map_err(ApiError::internal)?;
            let service = by_key(&ServiceKey::new(&owner.namespace, &owner.name));
            event_for(
                report,
                service,
                "ClusterIPNotAllocated",
                format!(
                    "Cluster IP [{}]: {ip} is not allocated; repairing",
                    family_name(*ip)
                ),
            );
        }
        // Leaks: an IPAddress object (this incarnation of it: its store version) seen
        // unused by any Service for the grace period is deleted, at that version only, so
        // that an address released and taken again between two passes, or re-created by a
        // write still in flight, starts its own grace period.
        let grace = self.config.leak_grace;
        let orphaned: BTreeSet<IpAddr> = found.orphaned.iter().copied().collect();
        let mut still = std::collections::HashMap::new();
        for ip in &orphaned {
            let Some(version) = versions.get(ip).copied() else {
                continue;
            };
            let since = self
                .address_leaks
                .get(&(*ip, version))
                .copied()
                .unwrap_or(now);
            if now.saturating_duration_since(since) >= grace && since < now {
                let key = self.config.ip_address_key(*ip);
                if self
                    .store
                    .delete(&key, version)
                    .map_err(ApiError::internal)?
                {
                    report.freed += 1;
                }
            } else {
                still.insert((*ip, version), since);
                report.suspected_leaks += 1;
            }
        }
        self.address_leaks = still;
        self.reload_addresses()?;
        Ok(())
    }
}

fn family_name(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}
