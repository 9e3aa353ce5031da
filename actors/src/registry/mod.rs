//! The registry actor: the single source of flow types, from config, the API and Rust code.
//! Versions are immutable once registered, so a flow always runs the definition it started with.

pub mod messages;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::prelude::*;
use tracing::info;

use crate::definition::{DefinitionError, FlowType};
use crate::error::RuntimeError;
use crate::handler::HandlerSet;
use crate::limits::Limits;
use crate::persistence::{Persist, PersistenceActor};
use crate::store::Write;
pub use messages::{GetFlowType, ListFlowTypes, RegisterFlowType};

/// Holds every registered version of every flow type.
pub struct Registry {
    types: HashMap<String, BTreeMap<u32, Arc<FlowType>>>,
    handlers: Arc<HandlerSet>,
    persistence: Addr<PersistenceActor>,
    limits: Limits,
}

impl Registry {
    /// A registry holding the versions already stored; new ones must keep within `limits`.
    pub fn new(
        stored: Vec<FlowType>,
        handlers: Arc<HandlerSet>,
        persistence: Addr<PersistenceActor>,
        limits: Limits,
    ) -> Self {
        let mut types: HashMap<String, BTreeMap<u32, Arc<FlowType>>> = HashMap::new();
        for definition in stored {
            types
                .entry(definition.name.clone())
                .or_default()
                .insert(definition.version, Arc::new(definition));
        }
        Self {
            types,
            handlers,
            persistence,
            limits,
        }
    }

    /// The child flow types of `definition` exist, and no chain of fan-outs starting from it
    /// comes back to it or runs deeper than the limit (children of children …). The candidate
    /// stands in for the latest version of its own name.
    fn check_children(&self, definition: &FlowType) -> Result<(), DefinitionError> {
        for (index, phase) in definition.phases.iter().enumerate() {
            let own = FlowType {
                phases: vec![phase.clone()],
                ..definition.clone()
            };
            for child in own.child_types() {
                let field = format!("phases[{index}].params.flow_type");
                if child == definition.name {
                    return Err(DefinitionError {
                        field,
                        message: "a flow type cannot start children of its own type".into(),
                    });
                }
                if self.latest(child, definition).is_none() {
                    return Err(DefinitionError {
                        field,
                        message: format!("no flow type `{child}` is registered"),
                    });
                }
                if let Err(message) = self.depth(child, definition, 2) {
                    return Err(DefinitionError { field, message });
                }
            }
        }
        Ok(())
    }

    fn latest<'a>(&'a self, name: &str, candidate: &'a FlowType) -> Option<&'a FlowType> {
        if name == candidate.name {
            return Some(candidate);
        }
        self.types
            .get(name)
            .and_then(|versions| versions.values().next_back())
            .map(|t| &**t)
    }

    /// Walks the fan-out chain below `name`, which sits at `level` under the candidate.
    fn depth(&self, name: &str, candidate: &FlowType, level: usize) -> Result<(), String> {
        if level > self.limits.max_child_depth {
            return Err(format!(
                "fan-outs nest deeper than {} levels",
                self.limits.max_child_depth
            ));
        }
        let Some(definition) = self.latest(name, candidate) else {
            return Ok(());
        };
        for child in definition.child_types() {
            if child == candidate.name {
                return Err(format!(
                    "`{name}` starts children of `{child}` again: fan-outs would never end"
                ));
            }
            self.depth(child, candidate, level + 1)?;
        }
        Ok(())
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

impl Handler<RegisterFlowType> for Registry {
    type Result = ResponseActFuture<Self, Result<Arc<FlowType>, RuntimeError>>;

    fn handle(
        &mut self,
        RegisterFlowType(definition): RegisterFlowType,
        _: &mut Self::Context,
    ) -> Self::Result {
        let handlers = self.handlers.clone();
        let checked = definition
            .validate_with(|name| handlers.contains(name), &self.limits)
            .and_then(|()| self.check_children(&definition));
        if let Err(error) = checked {
            return Box::pin(fut::ready(Err(error.into())));
        }
        let versions = self.types.entry(definition.name.clone()).or_default();
        if let Some(existing) = versions.get(&definition.version) {
            let result = if **existing == definition {
                Ok(existing.clone())
            } else {
                Err(RuntimeError::VersionConflict {
                    difference: difference(existing, &definition),
                    name: definition.name,
                    version: definition.version,
                })
            };
            return Box::pin(fut::ready(result));
        }
        // Claimed now so a concurrent registration of the same version sees it; released if the write fails.
        let definition = Arc::new(definition);
        versions.insert(definition.version, definition.clone());
        let write = self
            .persistence
            .send(Persist::unfenced(Write::FlowType((*definition).clone())));
        Box::pin(write.into_actor(self).map(move |result, act, _| {
            match result.map_err(RuntimeError::from).and_then(|r| r.map_err(RuntimeError::from)) {
                Ok(()) => {
                    info!(flow_type = %definition.name, version = definition.version, "flow type registered");
                    Ok(definition)
                }
                Err(error) => {
                    if let Some(versions) = act.types.get_mut(&definition.name) {
                        versions.remove(&definition.version);
                    }
                    Err(error)
                }
            }
        }))
    }
}

/// What differs between two definitions of one (name, version), for the refusal's message.
pub fn difference(stored: &FlowType, offered: &FlowType) -> String {
    let names = |t: &FlowType| t.phases.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    let (before, after) = (names(stored), names(offered));
    if before != after {
        return format!(
            "phases were [{}], now [{}]",
            before.join(", "),
            after.join(", ")
        );
    }
    for (old, new) in stored.phases.iter().zip(&offered.phases) {
        if old == new {
            continue;
        }
        let (Ok(serde_json::Value::Object(old_fields)), Ok(serde_json::Value::Object(new_fields))) =
            (serde_json::to_value(old), serde_json::to_value(new))
        else {
            return format!("phase `{}` differs", old.name);
        };
        let mut keys: Vec<&String> = old_fields.keys().chain(new_fields.keys()).collect();
        keys.sort();
        keys.dedup();
        let changed: Vec<String> = keys
            .into_iter()
            .filter(|key| old_fields.get(*key) != new_fields.get(*key))
            .map(|key| format!("`{key}`"))
            .collect();
        return format!("phase `{}`: {} differs", old.name, changed.join(", "));
    }
    "the definitions differ".to_owned()
}

impl Handler<GetFlowType> for Registry {
    type Result = Option<Arc<FlowType>>;

    fn handle(&mut self, message: GetFlowType, _: &mut Self::Context) -> Self::Result {
        let versions = self.types.get(&message.name)?;
        match message.version {
            Some(version) => versions.get(&version).cloned(),
            None => versions.values().next_back().cloned(),
        }
    }
}

impl Handler<ListFlowTypes> for Registry {
    type Result = Vec<Arc<FlowType>>;

    fn handle(&mut self, _: ListFlowTypes, _: &mut Self::Context) -> Self::Result {
        let mut latest: Vec<_> = self
            .types
            .values()
            .filter_map(|versions| versions.values().next_back().cloned())
            .collect();
        latest.sort_by(|a, b| a.name.cmp(&b.name));
        latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::PhaseDefinition;

    fn flow_type(phases: Vec<PhaseDefinition>) -> FlowType {
        FlowType {
            name: "report".into(),
            version: 1,
            phases,
        }
    }

    #[test]
    fn the_difference_names_the_phase_and_the_keys() {
        let stored = flow_type(vec![
            PhaseDefinition::new("collect", "noop"),
            PhaseDefinition::new("render", "noop"),
        ]);
        let mut changed = stored.clone();
        changed.phases[1].retries = 2;
        changed.phases[1].handler = "sleep".into();
        assert_eq!(
            difference(&stored, &changed),
            "phase `render`: `handler`, `retries` differs"
        );
        let renamed = flow_type(vec![PhaseDefinition::new("collect", "noop")]);
        assert_eq!(
            difference(&stored, &renamed),
            "phases were [collect, render], now [collect]"
        );
    }
}
